"""GGUF writer: round trips through smallmind's reader and gguf-py, type inference,
byte-identical rewrites of the real files, and a byte-level GPT-2 file llama.cpp runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import cached_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smallmind.formats.gguf import GGUFValueType as VT
from smallmind.formats.gguf import load_gguf, read_gguf
from smallmind.formats.gguf_writer import GGUFValue, gpt2_byte_tokens, gpt2_metadata, typed, write_gguf
from smallmind.models.config import ModelConfig
from smallmind.tensors import BLOCK_LAYOUT, GGMLType, TensorData


def test_type_inference(tmp_path):
    metadata = {
        "u32": 7, "neg": -7, "big": 2**40, "bigneg": -2**40, "f": 0.25, "b": True, "s": "text",
        "ints": [1, -2, 3], "floats": [0.5, 1], "strs": ["a", "é"], "bools": [True, False],
        "np_u8": np.uint8(5), "np_f64": np.float64(0.1), "np_arr": np.arange(4, dtype=np.int16),
        "tokenizer.ggml.merges": [], "nested": [[1, 2], [3]],
        "explicit": GGUFValue(3, VT.UINT8),
        "explicit_arr": GGUFValue([1, 2], VT.ARRAY, VT.UINT64),
        "empty": GGUFValue([], VT.ARRAY, VT.FLOAT32),
    }
    f = read_gguf(write_gguf(tmp_path / "t.gguf", "llama", metadata, {}))
    types = f.value_types
    assert types["general.architecture"] == VT.STRING
    assert types["u32"] == VT.UINT32 and types["neg"] == VT.INT32
    assert types["big"] == VT.UINT64 and types["bigneg"] == VT.INT64
    assert types["f"] == VT.FLOAT32 and types["b"] == VT.BOOL and types["s"] == VT.STRING
    assert types["ints"] == (VT.ARRAY, VT.INT32) and types["floats"] == (VT.ARRAY, VT.FLOAT32)
    assert types["strs"] == (VT.ARRAY, VT.STRING) and types["bools"] == (VT.ARRAY, VT.BOOL)
    assert types["np_u8"] == VT.UINT8 and types["np_f64"] == VT.FLOAT64
    assert types["np_arr"] == (VT.ARRAY, VT.INT16)
    assert types["tokenizer.ggml.merges"] == (VT.ARRAY, VT.STRING)
    assert types["nested"] == (VT.ARRAY, (VT.ARRAY, VT.INT32))
    assert types["explicit"] == VT.UINT8 and types["explicit_arr"] == (VT.ARRAY, VT.UINT64)
    md = f.metadata
    assert md["general.architecture"] == "llama"
    assert (md["u32"], md["neg"], md["big"], md["bigneg"]) == (7, -7, 2**40, -2**40)
    assert md["f"] == 0.25 and md["b"] is True and md["s"] == "text"
    assert md["ints"] == [1, -2, 3] and md["floats"] == [0.5, 1.0] and md["strs"] == ["a", "é"]
    assert md["np_f64"] == 0.1 and md["np_arr"] == [0, 1, 2, 3] and md["nested"] == [[1, 2], [3]]
    assert md["empty"] == [] and md["tokenizer.ggml.merges"] == []


def test_bad_metadata_is_refused(tmp_path):
    with pytest.raises(TypeError, match="empty list"):
        write_gguf(tmp_path / "a.gguf", "llama", {"x": []}, {})
    with pytest.raises(TypeError, match="mixes"):
        write_gguf(tmp_path / "a.gguf", "llama", {"x": [1, "a"]}, {})
    with pytest.raises(TypeError):
        write_gguf(tmp_path / "a.gguf", "llama", {"x": object()}, {})
    with pytest.raises(ValueError, match="64 bits"):
        write_gguf(tmp_path / "a.gguf", "llama", {"x": 2**70}, {})
    with pytest.raises(ValueError, match="does not fit"):
        write_gguf(tmp_path / "a.gguf", "llama", {"x": GGUFValue(300, VT.UINT8)}, {})
    with pytest.raises(ValueError, match="out of range"):
        write_gguf(tmp_path / "a.gguf", "llama", {"x": GGUFValue([-1], VT.ARRAY, VT.UINT32)}, {})
    with pytest.raises(ValueError, match="contradicts"):
        write_gguf(tmp_path / "a.gguf", "llama", {"general.architecture": "gpt2"}, {})
    assert not (tmp_path / "a.gguf").exists()


def test_bad_tensors_are_refused(tmp_path):
    with pytest.raises(TypeError, match="float64"):
        write_gguf(tmp_path / "a.gguf", "llama", {}, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match="longer than"):
        write_gguf(tmp_path / "a.gguf", "llama", {}, {"w" * 64: np.zeros(3, np.float32)})
    q = TensorData("q", GGMLType.Q4_0, (2, 32), np.zeros((2, 17), np.uint8))
    with pytest.raises(ValueError, match="takes 36 bytes"):
        write_gguf(tmp_path / "a.gguf", "llama", {}, {"q": q})
    q = TensorData("q", GGMLType.Q4_0, (2, 30), np.zeros((2, 18), np.uint8))
    with pytest.raises(ValueError, match="multiple of 32"):
        write_gguf(tmp_path / "a.gguf", "llama", {}, {"q": q})
    with pytest.raises(ValueError, match="1 to 4"):
        write_gguf(tmp_path / "a.gguf", "llama", {}, {"w": np.zeros((1, 1, 1, 1, 2), np.float32)})


_QUANT_TYPES = [t for t in BLOCK_LAYOUT if t not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=3), min_size=1, max_size=5),
    kinds=st.lists(st.sampled_from(["f32", "f16", "bf16", "quant"]), min_size=5, max_size=5),
    quant=st.sampled_from(_QUANT_TYPES),
    alignment=st.sampled_from([1, 8, 32, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(tmp_path, shapes, kinds, quant, alignment, seed):
    """Random tensors of every storage kind come back with identical bytes, through
    smallmind's reader and through gguf-py's."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (shape, kind) in enumerate(zip(shapes, kinds, strict=False)):
        shape = tuple(shape)
        name = f"t{i}.weight"
        if kind == "f32":
            tensors[name] = rng.standard_normal(shape).astype(np.float32)
        elif kind == "f16":
            tensors[name] = rng.standard_normal(shape).astype(np.float16)
        elif kind == "bf16":
            tensors[name] = TensorData(name, GGMLType.BF16, shape,
                                       rng.integers(0, 2**16, shape, dtype=np.uint16))
        else:
            block, nbytes = BLOCK_LAYOUT[quant]
            logical = shape[:-1] + (shape[-1] * block,)
            rows = math.prod(shape[:-1])
            raw = rng.integers(0, 256, (rows, shape[-1] * nbytes), dtype=np.uint8)
            tensors[name] = TensorData(name, quant, logical, raw)
    metadata = {"general.name": f"rt-{seed}", "test.seed": seed % 2**32,
                "test.values": rng.standard_normal(3).astype(np.float32)}
    path = write_gguf(tmp_path / "rt.gguf", "llama", metadata, tensors, alignment=alignment)

    f = read_gguf(path)
    assert f.alignment == alignment
    # gguf-py 0.19 sizes a Q8_1 block at 40 bytes (two float32 scales); ggml's
    # block_q8_1 has two float16 scales, 36 bytes. Q8_1 never appears in model files, so
    # gguf-py cannot be the oracle for it.
    check_with_gguf_py = quant != GGMLType.Q8_1 or "quant" not in kinds[:len(shapes)]
    assert f.metadata["test.seed"] == seed % 2**32
    assert np.array_equal(np.float32(f.metadata["test.values"]), metadata["test.values"])
    assert list(f.tensors) == list(tensors)
    ref = gguf.GGUFReader(path) if check_with_gguf_py else None
    ref_tensors = {t.name: t for t in ref.tensors} if ref else {}
    for name, original in tensors.items():
        got = f.tensors[name]
        raw = original.data if isinstance(original, TensorData) else original
        assert got.shape == (original.shape if isinstance(original, TensorData) else raw.shape)
        assert got.data.tobytes() == np.ascontiguousarray(raw).tobytes()
        assert f.tensor_offsets[name] % alignment == 0
        if ref is not None:
            theirs = ref_tensors[name]
            assert tuple(int(d) for d in reversed(theirs.shape)) == got.shape
            assert np.asarray(theirs.data).tobytes() == got.data.tobytes()
    if ref is not None:
        assert ref.fields["general.name"].contents() == f"rt-{seed}"


def test_rewrite_of_real_file_is_byte_identical(tmp_path):
    """Reading SmolLM2 and writing it back with the recorded types reproduces the file."""
    source = cached_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    f = read_gguf(source)
    out = write_gguf(tmp_path / "copy.gguf", f.metadata["general.architecture"],
                     typed(f.metadata, f.value_types), f.tensors, alignment=f.alignment)
    assert out.stat().st_size == source.stat().st_size
    with open(source, "rb") as a, open(out, "rb") as b:
        while True:
            chunk_a, chunk_b = a.read(1 << 22), b.read(1 << 22)
            assert chunk_a == chunk_b
            if not chunk_a:
                break


def test_gpt2_byte_tokens():
    tokens = gpt2_byte_tokens()
    assert len(tokens) == 256 and len(set(tokens)) == 256
    assert all(len(t) == 1 for t in tokens)
    # Well-known spellings from GPT-2's vocabulary: space is "Ġ", newline "Ċ".
    assert tokens[ord(" ")] == "\u0120" and tokens[ord("\n")] == "\u010a"
    assert tokens[ord("A")] == "A" and tokens[0xE9] == "\u00e9"
    assert tokens[0] == "\u0100" and tokens[0xAD] == "\u0143"


def _random_gpt2(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, v = cfg.n_embd, cfg.n_hidden, cfg.vocab_size

    def r(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"token_embd.weight": r(v, d, scale=0.5), "position_embd.weight": r(cfg.n_ctx, d),
         "output_norm.weight": 1 + r(d), "output_norm.bias": r(d), "output.weight": r(v, d)}
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        t.update({p + "attn_norm.weight": 1 + r(d), p + "attn_norm.bias": r(d),
                  p + "attn_qkv.weight": r(3 * d, d), p + "attn_qkv.bias": r(3 * d),
                  p + "attn_output.weight": r(d, d), p + "attn_output.bias": r(d),
                  p + "ffn_norm.weight": 1 + r(d), p + "ffn_norm.bias": r(d),
                  p + "ffn_up.weight": r(f, d), p + "ffn_up.bias": r(f),
                  p + "ffn_down.weight": r(d, f), p + "ffn_down.bias": r(d)})
    return t


def _gpt2_reference_logits(cfg: ModelConfig, t: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Float64 GPT-2 forward (pre-LN, fused QKV, tanh GELU, causal softmax)."""
    d, n, heads = cfg.n_embd, len(ids), cfg.n_head
    hd = d // heads

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.norm_eps) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    x = t["token_embd.weight"][ids].astype(np.float64) + t["position_embd.weight"][:n]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        h = ln(x, t[p + "attn_norm.weight"], t[p + "attn_norm.bias"])
        q, k, v = np.split(h @ t[p + "attn_qkv.weight"].T + t[p + "attn_qkv.bias"], 3, axis=-1)
        q, k, v = (a.reshape(n, heads, hd).transpose(1, 0, 2) for a in (q, k, v))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ v).transpose(1, 0, 2).reshape(n, d)
        x = x + o @ t[p + "attn_output.weight"].T + t[p + "attn_output.bias"]
        h = ln(x, t[p + "ffn_norm.weight"], t[p + "ffn_norm.bias"])
        h = gelu(h @ t[p + "ffn_up.weight"].T + t[p + "ffn_up.bias"])
        x = x + h @ t[p + "ffn_down.weight"].T + t[p + "ffn_down.bias"]
    return ln(x, t["output_norm.weight"], t["output_norm.bias"]) @ t["output.weight"].T


def test_gpt2_file_reads_back(tmp_path):
    cfg = ModelConfig.seed_small()
    tensors = _random_gpt2(cfg)
    path = write_gguf(tmp_path / "g.gguf", "gpt2", gpt2_metadata(cfg), tensors)
    model = load_gguf(path)
    got = model.config
    for field in ("arch", "vocab_size", "n_ctx", "n_embd", "n_layer", "n_head", "n_kv_head",
                  "head_dim", "n_hidden", "bias", "tie_embeddings"):
        assert getattr(got, field) == getattr(cfg, field), field
    assert got.norm_eps == pytest.approx(cfg.norm_eps)
    for name, arr in tensors.items():
        assert np.array_equal(model.tensors[name].data, arr)
    assert model.metadata["tokenizer.ggml.model"] == "gpt2"
    assert model.metadata["tokenizer.ggml.tokens"] == gpt2_byte_tokens()
    assert model.metadata["tokenizer.ggml.merges"] == []
    # Tied variant: no output.weight in the file.
    tied = {k: v for k, v in tensors.items() if k != "output.weight"}
    assert load_gguf(write_gguf(tmp_path / "t.gguf", "gpt2", gpt2_metadata(cfg), tied)).config.tie_embeddings


def test_gpt2_file_runs_in_llama_cpp(tmp_path):
    """llama.cpp loads the byte-level GPT-2 file, tokenises text to its bytes and gives
    the logits of an independent float64 forward pass."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cfg = ModelConfig.seed_small()
    tensors = _random_gpt2(cfg, seed=1)
    path = write_gguf(tmp_path / "g.gguf", "gpt2", gpt2_metadata(cfg), tensors)
    llm = llama_cpp.Llama(str(path), n_ctx=cfg.n_ctx, logits_all=True, verbose=False,
                          n_threads=1, n_batch=cfg.n_ctx)
    text = "ROMEO: é\n\tx"
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert ids == list(text.encode())
    assert llm.detokenize(ids) == text.encode()
    llm.eval(ids)
    got = np.array(llm.scores[:len(ids)], dtype=np.float64)
    ref = _gpt2_reference_logits(cfg, tensors, ids)
    # llama.cpp's GELU is a float16 lookup table; everything else is float32.
    np.testing.assert_allclose(got, ref, atol=1e-2 * np.abs(ref).max(), rtol=0)
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))
