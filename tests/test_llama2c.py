"""llama2.c checkpoints: stories260K, synthetic legacy/version-1 files, size and header
validation, and the GGUF converter (checked with llama.cpp when it is installed)."""
from __future__ import annotations

import importlib.util
import shutil
import struct
import sys

import numpy as np
import pytest
from conftest import REPO, shared_model

from smallmind.errors import ModelFormatError, TokenizerError, UnsupportedModelError
from smallmind.formats.gguf import load_gguf, read_gguf
from smallmind.formats.llama2c import load_llama2c
from smallmind.formats.loader import load_model
from smallmind.tensors import GGMLType
from smallmind.tokenizers import ByteTokenizer

STORIES = "stories260K/stories260K.bin"


def _converter():
    spec = importlib.util.spec_from_file_location("llama2c_to_gguf", REPO / "tools" / "llama2c_to_gguf.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama2c_to_gguf"] = module
    spec.loader.exec_module(module)
    return module


def synthetic(dim=8, hidden=12, layers=2, heads=4, kv_heads=2, vocab=16, seq_len=6, *,
              shared=True, version=0, seed=0):
    """Bytes of a llama2.c file with random weights, and the weights by GGUF name."""
    rng = np.random.default_rng(seed)
    hs = dim // heads
    kv = kv_heads * hs

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w = {"emb": r(vocab, dim), "att": r(layers, dim), "wq": r(layers, dim, dim),
         "wk": r(layers, kv, dim), "wv": r(layers, kv, dim), "wo": r(layers, dim, dim),
         "ffn": r(layers, dim), "w1": r(layers, hidden, dim), "w2": r(layers, dim, hidden),
         "w3": r(layers, hidden, dim), "final": r(dim), "cls": r(vocab, dim)}
    freqs = r(seq_len * hs // 2), r(seq_len * hs // 2)
    if version == 0:
        header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads,
                             vocab if shared else -vocab, seq_len)
        order = ["emb", "att", "wq", "wk", "wv", "wo", "ffn", "w1", "w2", "w3", "final"]
        body = b"".join(w[k].tobytes() for k in order) + freqs[0].tobytes() + freqs[1].tobytes()
    else:
        header = struct.pack("<Ii7iB", 0x616B3432, version, dim, hidden, layers, heads,
                             kv_heads, vocab, seq_len, int(shared))
        header += b"\0" * (256 - len(header))
        order = ["att", "ffn", "final", "emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
        body = b"".join(w[k].tobytes() for k in order)
    if not shared:
        body += w["cls"].tobytes()
    named = {"token_embd.weight": w["emb"], "output_norm.weight": w["final"]}
    if not shared:
        named["output.weight"] = w["cls"]
    for i in range(layers):
        for src, dst in [("att", "attn_norm"), ("wq", "attn_q"), ("wk", "attn_k"), ("wv", "attn_v"),
                         ("wo", "attn_output"), ("ffn", "ffn_norm"), ("w1", "ffn_gate"),
                         ("w2", "ffn_down"), ("w3", "ffn_up")]:
            named[f"blk.{i}.{dst}.weight"] = w[src][i]
    return header + body, named


# --------------------------------------------------------------------------------------
# stories260K


def test_stories260k_config_and_shapes():
    model = load_model(shared_model(STORIES))
    cfg = model.config
    assert model.format == "llama2c"
    assert (cfg.arch, cfg.n_embd, cfg.n_hidden, cfg.n_layer, cfg.n_head, cfg.n_kv_head,
            cfg.vocab_size, cfg.n_ctx) == ("llama", 64, 172, 5, 8, 4, 512, 512)
    assert cfg.head_dim == 8 and cfg.tie_embeddings and not cfg.bias
    assert cfg.rope_neox is False and cfg.rope_theta == 10000.0 and cfg.norm_eps == 1e-5
    t = model.tensors
    assert len(t) == 2 + 9 * 5
    assert t["token_embd.weight"].shape == (512, 64)
    assert t["blk.4.attn_q.weight"].shape == (64, 64)
    assert t["blk.0.attn_k.weight"].shape == (32, 64)
    assert t["blk.2.ffn_gate.weight"].shape == (172, 64)
    assert t["blk.2.ffn_down.weight"].shape == (64, 172)
    assert t["output_norm.weight"].shape == (64,)
    assert "output.weight" not in t
    for tensor in t.values():
        assert tensor.type == GGMLType.F32 and tensor.data.dtype == np.float32
        assert not tensor.data.flags.owndata and not tensor.data.flags.writeable


def test_stories260k_values_follow_run_c_layout():
    path = shared_model(STORIES)
    raw = np.fromfile(path, dtype="<f4", offset=28)
    model = load_model(path)
    d, h, L, kv, v = 64, 172, 5, 32, 512
    assert np.array_equal(model.tensors["token_embd.weight"].data.reshape(-1), raw[:v * d])
    off = v * d + L * d  # past token_emb and rms_att
    wq = raw[off:off + L * d * d].reshape(L, d, d)
    assert np.array_equal(model.tensors["blk.3.attn_q.weight"].data, wq[3])
    off += L * d * d * 2 + L * kv * d * 2 + L * d  # wq, wo, wk, wv, rms_ffn
    w1 = raw[off:off + L * h * d].reshape(L, h, d)
    assert np.array_equal(model.tensors["blk.1.ffn_gate.weight"].data, w1[1])
    final = raw[off + 3 * L * h * d:off + 3 * L * h * d + d]
    assert np.array_equal(model.tensors["output_norm.weight"].data, final)
    # RMSNorm gains of a trained model sit near 1, unlike the matrices around them.
    assert 0.2 < float(np.mean(final)) < 5


def test_stories260k_tokenizer_found_next_to_model():
    model = load_model(shared_model(STORIES))
    if model.tokenizer is None:
        pytest.fail("tok512.bin sits next to stories260K.bin but no tokenizer was loaded")
    assert model.tokenizer.vocab_size == 512
    # Prompt ids documented in the model's PROVENANCE.md (from llama2.c's run.c).
    assert model.tokenizer.encode("Zoo", add_special=True) == [1, 410, 469, 347]


@pytest.mark.parametrize("delta", [-1, -4, -4 * 64, 1, 4, 4096])
def test_wrong_size_is_refused(tmp_path, delta):
    blob = shared_model(STORIES).read_bytes()
    bad = blob[:len(blob) + delta] if delta < 0 else blob + b"\0" * delta
    path = tmp_path / "stories260K.bin"
    path.write_bytes(bad)
    with pytest.raises(ModelFormatError, match=f"{len(bad)} bytes.*exactly {len(blob)} bytes"):
        load_llama2c(path)
    # Format detection still recognises it, so the size complaint is what the user sees.
    with pytest.raises(ModelFormatError, match="exactly"):
        load_model(path)


# --------------------------------------------------------------------------------------
# synthetic files


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("shared", [True, False])
def test_synthetic_round_trip(tmp_path, version, shared):
    blob, named = synthetic(shared=shared, version=version, seed=version * 2 + shared)
    path = tmp_path / "m.bin"
    path.write_bytes(blob)
    model = load_model(path)
    assert model.format == "llama2c"
    assert model.config.tie_embeddings == shared
    assert model.config.n_kv_head == 2 and model.config.n_ctx == 6
    assert model.config.extra["llama2c_version"] == version
    assert set(model.tensors) == set(named)
    for name, arr in named.items():
        assert np.array_equal(model.tensors[name].data, arr), name


def test_unsupported_version(tmp_path):
    blob, _ = synthetic(version=2)
    path = tmp_path / "q8.bin"
    path.write_bytes(blob)
    with pytest.raises(UnsupportedModelError, match="version 2"):
        load_model(path)


@pytest.mark.parametrize("fields, message", [
    ((8, 12, 2, 3, 3, 16, 6), "not a multiple of n_heads"),
    ((8, 12, 2, 4, 3, 16, 6), "not a multiple of n_kv_heads"),
    ((8, 12, 0, 4, 2, 16, 6), "n_layers=0"),
    ((8, -12, 2, 4, 2, 16, 6), "hidden_dim=-12"),
    ((8, 12, 2, 4, 2, 16, 0), "seq_len=0"),
    ((8, 12, 2, 8, 2, 16, 6), "odd"),
])
def test_impossible_header(tmp_path, fields, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(struct.pack("<7i", *fields) + b"\0" * 4096)
    with pytest.raises(ModelFormatError, match=message):
        load_llama2c(path)
    # Not plausible enough to be detected as llama2.c at all.
    with pytest.raises(ModelFormatError, match="unrecognised"):
        load_model(path)


def test_v1_bad_flag_and_truncated_header(tmp_path):
    blob, _ = synthetic(version=1)
    path = tmp_path / "m.bin"
    path.write_bytes(blob[:36] + b"\x05" + blob[37:])
    with pytest.raises(ModelFormatError, match="shared_classifier"):
        load_model(path)
    path.write_bytes(blob[:100])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_model(path)


def test_explicit_tokenizer(tmp_path):
    blob, _ = synthetic(vocab=256)
    path = tmp_path / "m.bin"
    path.write_bytes(blob)
    tok = ByteTokenizer()
    assert load_model(path, tokenizer=tok).tokenizer is tok
    blob, _ = synthetic(vocab=16)
    path.write_bytes(blob)
    with pytest.raises(TokenizerError, match="256 tokens"):
        load_model(path, tokenizer=tok)


def test_mismatched_tokenizer_file_is_not_picked_up(tmp_path):
    """A tokenizer.bin with another vocabulary size next to the model is ignored."""
    blob, _ = synthetic(vocab=16)
    model_path = tmp_path / "m.bin"
    model_path.write_bytes(blob)
    shutil.copy(shared_model("stories260K/tok512.bin"), tmp_path / "tokenizer.bin")
    assert load_model(model_path).tokenizer is None


# --------------------------------------------------------------------------------------
# tools/llama2c_to_gguf.py


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "stories260K.gguf"
    _converter().main([str(shared_model(STORIES)), str(out),
                       "--tokenizer", str(shared_model("stories260K/tok512.bin"))])
    return out


def test_converted_gguf_matches_source(converted):
    source = load_model(shared_model(STORIES))
    model = load_gguf(converted)
    for field in ("arch", "vocab_size", "n_ctx", "n_embd", "n_layer", "n_head", "n_kv_head",
                  "head_dim", "n_hidden", "tie_embeddings", "rope_neox", "rope_theta"):
        assert getattr(model.config, field) == getattr(source.config, field), field
    assert model.config.norm_eps == pytest.approx(1e-5)
    assert set(model.tensors) == set(source.tensors)
    for name, t in source.tensors.items():
        assert np.array_equal(model.tensors[name].data, t.data), name
    md = model.metadata
    assert md["tokenizer.ggml.model"] == "llama"
    tokens = md["tokenizer.ggml.tokens"]
    assert len(tokens) == 512 and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3] == "<0x00>" and md["tokenizer.ggml.token_type"][3] == 6
    assert md["tokenizer.ggml.token_type"][:3] == [2, 3, 3]
    assert not any(" " in t for t in tokens)          # spaces spelled "▁" again
    assert any(t.startswith("\u2581") for t in tokens)
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert len(md["tokenizer.ggml.scores"]) == 512


def test_converted_gguf_reads_in_gguf_py(converted):
    gguf = pytest.importorskip("gguf")
    ref = gguf.GGUFReader(converted)
    assert ref.fields["general.architecture"].contents() == "llama"
    assert ref.fields["llama.rope.dimension_count"].contents() == 8
    ours = read_gguf(converted)
    for t in ref.tensors:
        assert np.asarray(t.data).tobytes() == ours.tensors[t.name].data.tobytes()


def test_converted_gguf_generates_reference_text_in_llama_cpp(converted):
    """llama.cpp greedy-decodes the converted model to run.c's documented output."""
    llama_cpp = pytest.importorskip("llama_cpp")
    expected = shared_model("stories260K/expected_greedy_prompt_Zoo_60steps.txt").read_text()
    llm = llama_cpp.Llama(str(converted), n_ctx=512, verbose=False, n_threads=1)
    prompt = llm.tokenize(b"Zoo", add_bos=True)
    assert prompt == [1, 410, 469, 347]
    generated = []
    # run.c -n 60 runs 60 positions: the BOS position plus 59 predictions, 3 of which
    # are the prompt's own tokens.
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        if token == llm.token_eos():
            break
        generated.append(token)
        if len(prompt) + len(generated) == 61:
            break
    text = llm.detokenize(prompt + generated).decode()
    assert text == expected
