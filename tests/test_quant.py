"""Weight storage formats: Weight.dequantize / get_row against gguf's reference dequantisers.

gguf (llama.cpp's Python package, a test-only dependency) is the oracle for the block
layouts: random blocks, with the scale fields set to awkward but finite values (zero,
negative, f16 max, subnormal), must dequantise bit-exactly as gguf does.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401  (CPU check before the kernels load)
from smallmind._core import _matmul
from smallmind.errors import ShapeError, UnsupportedModelError
from smallmind.tensors import BLOCK_LAYOUT, GGMLType

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
# byte offsets of the f16 scale fields (d, m / dmin) inside one block of each type
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
# finite f16 scales that stress the conversion: zero, -0, tiny subnormals, max, negatives
SPECIAL_SCALES = np.array([0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 6.0e-5, 65504.0, -65504.0, 1.0, -0.5],
                          dtype=np.float16)


def random_blocks(name: str, n_blocks: int, rng: np.random.Generator, special: float = 0.3) -> np.ndarray:
    """(n_blocks, block_bytes) uint8: random codes, finite f16 scales (some special)."""
    _, nbytes = BLOCK_LAYOUT[GGMLType[name]]
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    if rng.random() < 0.2:  # all-zero codes happen (padding, pruned weights)
        raw[rng.random(n_blocks) < 0.5] = 0
    for off in F16_FIELDS[name]:
        scales = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-4, 1, n_blocks)).astype(np.float16)
        pick = rng.random(n_blocks) < special
        scales[pick] = rng.choice(SPECIAL_SCALES, size=int(pick.sum()))
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


def reference(name: str, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    qtype = gguf.GGMLQuantizationType[name]
    return gguf_dequantize(raw.reshape(rows, -1), qtype).reshape(rows, cols).astype(np.float32)


@given(name=st.sampled_from(QUANT_TYPES), rows=st.integers(1, 9), blocks=st.integers(1, 5),
       seed=st.integers(0, 2 ** 32 - 1))
def test_dequantize_matches_gguf(name, rows, blocks, seed):
    rng = np.random.default_rng(seed)
    block_elems, _ = BLOCK_LAYOUT[GGMLType[name]]
    cols = blocks * block_elems
    raw = random_blocks(name, rows * blocks, rng)
    w = _matmul.Weight(int(GGMLType[name]), (rows, cols), raw.reshape(-1))
    expected = reference(name, raw, rows, cols)
    got = w.dequantize()
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    np.testing.assert_array_equal(got, expected)  # same f16 -> f32 products: bit-exact
    r = int(rng.integers(rows))
    np.testing.assert_array_equal(w.get_row(r), expected[r])
    out = np.full(cols, np.nan, np.float32)
    assert w.get_row(r - rows, out=out) is out  # negative index, caller's buffer
    np.testing.assert_array_equal(out, expected[r])


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_every_code_and_scale_layout(name):
    """Block layouts byte by byte: each code value at each position, on 2-D row storage."""
    block_elems, nbytes = BLOCK_LAYOUT[GGMLType[name]]
    rows = 16
    # row r, byte i = (17 i + 16 r) mod 256: every byte value appears at every position mod 16
    raw = ((np.arange(2 * nbytes)[None, :] * 17 + 16 * np.arange(rows)[:, None]) % 256).astype(np.uint8)
    for off in F16_FIELDS[name]:
        for half in range(2):
            raw[:, half * nbytes + off:half * nbytes + off + 2] = np.array([0.125 + half], np.float16).view(np.uint8)
    w = _matmul.Weight(int(GGMLType[name]), (rows, 2 * block_elems), raw)
    np.testing.assert_array_equal(w.dequantize(), reference(name, raw, rows, 2 * block_elems))


def test_q8_k_layout():
    """Q8_K (gguf has no dequantiser for it): f32 d, 256 int8 codes, 16 int16 sums."""
    rng = np.random.default_rng(3)
    rows, nb = 3, 2
    d = rng.standard_normal((rows, nb)).astype(np.float32)
    q = rng.integers(-128, 128, size=(rows, nb, 256)).astype(np.int8)
    bsums = q.reshape(rows, nb, 16, 16).sum(-1).astype(np.int16)
    raw = np.concatenate([d[..., None].view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=-1)
    assert raw.shape == (rows, nb, 292)
    w = _matmul.Weight(int(GGMLType.Q8_K), (rows, nb * 256), raw.reshape(rows, -1))
    expected = (d[..., None] * q.astype(np.float32)).reshape(rows, -1)
    np.testing.assert_array_equal(w.dequantize(), expected)


@given(rows=st.integers(1, 7), cols=st.integers(1, 70), seed=st.integers(0, 2 ** 32 - 1))
def test_float_types_dequantize(rows, cols, seed):
    rng = np.random.default_rng(seed)
    f32 = (rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    np.testing.assert_array_equal(_matmul.Weight(int(GGMLType.F32), (rows, cols), f32).dequantize(), f32)
    f16 = f32.astype(np.float16)
    for data in (f16, f16.view(np.uint16), f16.view(np.uint8).reshape(rows, -1)):
        w = _matmul.Weight(int(GGMLType.F16), (rows, cols), data)
        np.testing.assert_array_equal(w.dequantize(), f16.astype(np.float32))
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
    expected = (bf16.astype(np.uint32) << 16).view(np.float32)
    w = _matmul.Weight(int(GGMLType.BF16), (rows, cols), bf16)
    np.testing.assert_array_equal(w.dequantize(), expected)
    np.testing.assert_array_equal(w.get_row(rows - 1), expected[-1])


def test_weight_keeps_read_only_storage_without_copying(tmp_path):
    rng = np.random.default_rng(0)
    raw = random_blocks("Q4_1", 4 * 3, rng)
    path = tmp_path / "w.bin"
    raw.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(4, 60))
    assert not mm.flags.writeable
    w = _matmul.Weight(int(GGMLType.Q4_1), (4, 96), mm)
    assert w.data is mm and w.nbytes == mm.nbytes == 240 and w.shape == (4, 96) and w.type == 3
    np.testing.assert_array_equal(w.dequantize(), reference("Q4_1", raw, 4, 96))
    y = w.matmul(np.ones(96, np.float32))
    assert y.shape == (4,) and np.isfinite(y).all()


@pytest.mark.parametrize("type_id", [int(GGMLType.Q8_1), int(GGMLType.Q2_K), int(GGMLType.Q3_K), 99])
def test_unsupported_type(type_id):
    with pytest.raises(UnsupportedModelError, match="not supported") as info:
        _matmul.Weight(type_id, (2, 256), np.zeros(2 * 256, np.uint8))
    if type_id != 99:
        assert GGMLType(type_id).name in str(info.value)


@pytest.mark.parametrize("name,shape,data,match", [
    ("Q4_1", (2, 64), np.zeros(79, np.uint8), "bytes"),             # one byte short
    ("Q4_1", (2, 48), np.zeros(60, np.uint8), "multiple of 32"),    # cols not whole blocks
    ("Q4_K", (1, 128), np.zeros(72, np.uint8), "multiple of 256"),
    ("F32", (2, 3), np.zeros((2, 3), np.float64), "dtype"),
    ("F32", (2, 3), np.zeros((3, 2), np.float32), "rows"),
    ("Q8_0", (2, 32), np.zeros((2, 68), np.uint8)[:, ::2], "contiguous"),
    ("Q8_0", (0, 32), np.zeros(0, np.uint8), "positive"),
    ("Q8_0", (2,), np.zeros(68, np.uint8), "pair"),
    ("Q8_0", (2, 32), b"\x00" * 68, "numpy array"),
])
def test_bad_storage_is_rejected(name, shape, data, match):
    with pytest.raises(ShapeError, match=match):
        _matmul.Weight(int(GGMLType[name]), shape, data)


def test_get_row_bounds():
    w = _matmul.Weight(int(GGMLType.F32), (3, 4), np.zeros((3, 4), np.float32))
    for bad in (3, -4):
        with pytest.raises(ShapeError, match="out of range"):
            w.get_row(bad)
    with pytest.raises(ShapeError, match="out"):
        w.get_row(0, out=np.zeros(5, np.float32))
