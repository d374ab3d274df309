"""Weight.matmul for every storage type, against float64 products of the dequantised weights.

Tolerances (stated per check below):

* float weights (F32, F16, BF16): |y - ref| <= 1e-5 * sum_i |w_i x_i| (float32 accumulation).
* quantised weights: the kernels quantise each activation row to int8 per block
  (d = amax/127, q = rint(x/d); 32-element blocks for Q4/Q5/Q8_0, 256 for K-quants) and
  multiply exactly in integers. Two checks:
  - exact model: against W @ x_q, where x_q is that quantisation replayed in numpy,
    |y - ref| <= 3e-5 * sum_i m_i |x_q,i| (float rounding only), where m_i = |w_i|, or for
    the types with a min (Q4_1, Q5_1, Q4_K, Q5_K; w = a - b) m_i = |a_i| + |b_i|: the
    kernels sum the two parts separately and they may cancel;
  - accuracy: against W @ x, |y - ref| <= c ||w|| ||x||, where the rounding error
    |x - x_q| <= amax/254 per element bounds c = sqrt(B-1)/254 + 1e-4: 0.0221 for B = 32,
    0.0630 for B = 256.

Every check runs for each instruction set the CPU has (AVX2 always, AVX-512 when present).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quant import random_blocks, reference

import smallmind  # noqa: F401  (CPU check before the kernels load)
from smallmind._core import _matmul
from smallmind.errors import ShapeError
from smallmind.tensors import BLOCK_LAYOUT, GGMLType

pytest.importorskip("gguf")

QUANT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
FLOAT_TYPES = ["F32", "F16", "BF16"]
DEFAULT_ISA = _matmul._isa()  # what the process chose (SMALLMIND_ISA may have lowered it)
ISA_LEVELS = [level for level in (1, 2) if level <= _matmul._detected_isa()]


# the `isa` fixture sets the instruction set once for all examples of a test, on purpose
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(params=ISA_LEVELS, ids=lambda level: {1: "avx2", 2: "avx512"}[level])
def isa(request):
    assert _matmul._set_isa(request.param) == request.param
    yield request.param
    _matmul._set_isa(DEFAULT_ISA)


@pytest.fixture(params=["stream", "rows4"])
def float_kernel(request):
    """Both AVX2 float matrix-vector kernels: the one-stream-per-row one (taken above 1 MiB)
    and the 4-row one (cache-sized matrices), whatever the matrix size here."""
    old = _matmul._set_float_stream_min_bytes(-1 if request.param == "stream" else 1 << 62)
    yield request.param
    _matmul._set_float_stream_min_bytes(old)


MIN_TYPES = {"Q4_1": 2, "Q5_1": 2, "Q4_K": 2, "Q5_K": 2}  # byte offset of the f16 min / dmin


def term_magnitude(name: str, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """|a| + |b| per element for w = a - b (scaled codes a, min b), else |w|."""
    if name not in MIN_TYPES:
        return np.abs(reference(name, raw, rows, cols))
    off = MIN_TYPES[name]
    no_min, no_scale = raw.copy(), raw.copy()
    no_min[:, off:off + 2] = 0
    no_scale[:, 0:2] = 0
    return np.abs(reference(name, no_min, rows, cols)) + np.abs(reference(name, no_scale, rows, cols))


def make_weight(name: str, rows: int, cols: int, rng: np.random.Generator, repack: bool = True):
    """A Weight of random storage, its float32 dequantisation and term magnitudes (repack=False:
    the 32-element block types keep their plain layout, see test_matmul_r8.py)."""
    gtype = GGMLType[name]
    if name in FLOAT_TYPES:
        f32 = (rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
        if name == "F32":
            return _matmul.Weight(int(gtype), (rows, cols), f32), f32, np.abs(f32)
        if name == "F16":
            f16 = f32.astype(np.float16)
            w32 = f16.astype(np.float32)
            return _matmul.Weight(int(gtype), (rows, cols), f16), w32, np.abs(w32)
        bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
        w32 = (bf16.astype(np.uint32) << 16).view(np.float32)
        return _matmul.Weight(int(gtype), (rows, cols), bf16), w32, np.abs(w32)
    block, _ = BLOCK_LAYOUT[gtype]
    raw = random_blocks(name, rows * cols // block, rng)
    w32 = reference(name, raw, rows, cols)
    w = _matmul.Weight(int(gtype), (rows, cols), raw.reshape(-1), repack=repack)
    return w, w32, term_magnitude(name, raw, rows, cols)


def random_activations(n: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, cols)) * 10.0 ** rng.uniform(-3, 3)
    x[rng.random((n, cols)) < 0.05] = 0.0
    if n > 1 and rng.random() < 0.3:
        x[rng.integers(n)] = 0.0  # an all-zero row: its codes and scales are all zero
    if rng.random() < 0.3:
        x[:, rng.integers(cols)] *= 100.0  # an outlier channel, as in real activations
    return x.astype(np.float32)


def quantize_like_kernel(x: np.ndarray, block: int) -> np.ndarray:
    """x_q = d * rint(x / d) per block with the kernel's float32 arithmetic."""
    n, cols = x.shape
    xb = x.reshape(n, cols // block, block)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(xb * inv)
    d = amax / np.float32(127.0)
    return (d.astype(np.float64) * q).reshape(n, cols)


def check_product(name, w32, mag, x, y, bias=None, base=None):
    """Asserts y == base + W x + bias within the tolerances of the module docstring;
    mag: per-element term magnitudes (see term_magnitude)."""
    w64 = w32.astype(np.float64)
    extra = np.zeros_like(y, dtype=np.float64)
    extra_mag = np.zeros_like(extra)  # bias and the accumulated y are rounded separately
    if bias is not None:
        extra += bias
        extra_mag += np.abs(bias)
    if base is not None:
        extra += base
        extra_mag += np.abs(base)
    if name in FLOAT_TYPES:
        ref = x.astype(np.float64) @ w64.T + extra
        tol = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w64).T) + 1e-6 * extra_mag + 1e-37
        assert np.all(np.abs(y - ref) <= tol), np.max(np.abs(y - ref) - tol)
        return
    block = 256 if name.endswith("_K") else 32
    xq = quantize_like_kernel(x, block)
    ref = xq @ w64.T + extra
    mag = np.abs(xq) @ mag.astype(np.float64).T
    tol = 3e-5 * mag + 1e-6 * extra_mag + 1e-37
    assert np.all(np.abs(y - ref) <= tol), np.max((np.abs(y - ref) - tol) / np.maximum(mag, 1e-30))
    ref = x.astype(np.float64) @ w64.T + extra
    c = np.sqrt(block - 1) / 254 + 1e-4
    bound = c * np.linalg.norm(x.astype(np.float64), axis=1)[:, None] * np.linalg.norm(w64, axis=1)[None, :]
    bound += 1e-5 * extra_mag + 1e-37
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / np.maximum(bound, 1e-30))


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(QUANT_TYPES + FLOAT_TYPES), rows=st.integers(1, 23), blocks=st.integers(1, 7),
       n=st.sampled_from([1, 2, 3, 5, 17]), repack=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_matmul_matches_reference(isa, name, rows, blocks, n, repack, seed):
    rng = np.random.default_rng(seed)
    block, _ = BLOCK_LAYOUT[GGMLType[name]]
    if block == 256:
        blocks = 1 + blocks % 3
    cols = blocks * (32 if block == 1 else block) + (int(rng.integers(0, 7)) if block == 1 else 0)
    w, w32, mag = make_weight(name, rows, cols, rng, repack)
    x = random_activations(n, cols, rng)
    y = w.matmul(x)
    assert y.shape == (n, rows) and y.dtype == np.float32
    check_product(name, w32, mag, x, y)
    y1 = w.matmul(x[0])  # 1-D in, 1-D out
    assert y1.shape == (rows,)
    check_product(name, w32, mag, x[:1], y1[None, :])


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(QUANT_TYPES + FLOAT_TYPES), rows=st.integers(1, 41), blocks=st.integers(1, 4),
       n=st.sampled_from([1, 2, 3, 5, 17]), use_bias=st.booleans(), accumulate=st.booleans(),
       pad_x=st.integers(0, 9), pad_y=st.integers(0, 9), seed=st.integers(0, 2 ** 32 - 1))
def test_bias_accumulate_and_strides(isa, name, rows, blocks, n, use_bias, accumulate, pad_x, pad_y, seed):
    rng = np.random.default_rng(seed)
    block, _ = BLOCK_LAYOUT[GGMLType[name]]
    cols = (1 + blocks % 2) * 256 if block == 256 else blocks * 32
    w, w32, mag = make_weight(name, rows, cols, rng)
    x_full = random_activations(n, cols + pad_x, rng)
    x = x_full[:, :cols]  # rows ldx = cols + pad_x floats apart
    y_full = rng.standard_normal((n, rows + pad_y)).astype(np.float32)
    y_before = y_full.copy()
    y = y_full[:, :rows]
    bias = rng.standard_normal(rows).astype(np.float32) if use_bias else None
    base = y.astype(np.float64).copy() if accumulate else None
    out = w.matmul(x, out=y, bias=bias, accumulate=accumulate)
    assert out is y
    check_product(name, w32, mag, x, y, bias=bias, base=base)
    np.testing.assert_array_equal(y_full[:, rows:], y_before[:, rows:])  # padding untouched


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(QUANT_TYPES + FLOAT_TYPES), n=st.sampled_from([1, 3, 17]),
       rows=st.sampled_from([255, 258, 301]), seed=st.integers(0, 2 ** 32 - 1))
def test_two_threads_match_one(isa, name, n, rows, seed):
    """Matrices big enough to be split across threads give the same result as one thread."""
    rng = np.random.default_rng(seed)
    cols = 512
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(n, cols, rng)
    one = w.matmul(x, n_threads=1)
    two = w.matmul(x, n_threads=2)
    np.testing.assert_array_equal(one, two)  # rows are split, never a dot product
    check_product(name, w32, mag, x, two)


@given(threads=st.integers(1, 4), n_units=st.integers(0, 70000), min_take=st.integers(-1, 3000))
def test_pool_range_job_runs_every_unit_once(threads, n_units, min_take):
    """The pool's range jobs (shrinking pieces claimed from both ends) cover every unit once."""
    counts = _matmul._pool_range_counts(threads, n_units, min_take)
    assert counts.shape == (n_units,) and (counts == 1).all()


@pytest.mark.parametrize("name,rows", [("Q8_0", 20011), ("Q4_K", 6150), ("Q6_K", 4099), ("F16", 3001)])
def test_threads_match_one_on_large_matrices(name, rows):
    """Matrices split into many shrinking pieces (an output matrix at decode) give, at any
    thread count, exactly the one-thread result, alone and in a fused call (matmul_many)."""
    rng = np.random.default_rng(rows)
    w, w32, mag = make_weight(name, rows, 256, rng)
    w2, _, _ = make_weight(name, rows // 3, 256, rng)
    for n in (1, 3):
        x = random_activations(n, 256, rng)
        one = w.matmul(x, n_threads=1)
        for threads in (2, 3):
            np.testing.assert_array_equal(w.matmul(x, n_threads=threads), one)
            if name != "F16":
                outs = _matmul._matmul_many([w2, w], x, threads)
                np.testing.assert_array_equal(outs[1], one)
                np.testing.assert_array_equal(outs[0], w2.matmul(x, n_threads=1))
        check_product(name, w32, mag, x, one)


@settings(suppress_health_check=FIXTURE_OK)
@given(names=st.lists(st.sampled_from(QUANT_TYPES + FLOAT_TYPES), min_size=1, max_size=4),
       n=st.sampled_from([1, 2, 5, 9]), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2 ** 32 - 1))
def test_matmul_many_equals_separate_products(isa, names, n, threads, seed):
    """Products sharing x (Q, K, V; gate, up) in one call: bit for bit the separate products,
    whether the weights share a quantisation of x (fused) or not (one at a time)."""
    rng = np.random.default_rng(seed)
    cols = 512  # a multiple of every block size
    made = [make_weight(name, int(rng.integers(60, 200)), cols, rng) for name in names]
    x = random_activations(n, cols, rng)
    outs = _matmul._matmul_many([w for w, _, _ in made], x, threads)
    for name, (w, w32, mag), y in zip(names, made, outs, strict=True):
        np.testing.assert_array_equal(y, w.matmul(x, n_threads=threads))
        check_product(name, w32, mag, x, y)


@pytest.mark.parametrize("name", FLOAT_TYPES)
@pytest.mark.parametrize("n", [8, 9, 64, 200])
def test_float_gemm_path(isa, name, n):
    """n >= 8 takes the packed GEMM: ragged tiles in every direction, k blocking, bias."""
    rng = np.random.default_rng(n)
    rows, cols = 101, 300  # not multiples of any tile size, cols > one k block
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(n, cols, rng)
    bias = rng.standard_normal(rows).astype(np.float32)
    y = rng.standard_normal((n, rows)).astype(np.float32)
    base = y.astype(np.float64).copy()
    w.matmul(x, out=y, bias=bias, accumulate=True, n_threads=2)
    check_product(name, w32, mag, x, y, bias=bias, base=base)


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(FLOAT_TYPES), rows=st.integers(1, 9), cols=st.integers(1, 120),
       n=st.integers(1, 7), seed=st.integers(0, 2 ** 32 - 1))
def test_float_matvec_any_columns(isa, float_kernel, name, rows, cols, n, seed):
    """n < 8 takes the matrix-vector kernel: every column tail (32, 16, 8 and single
    columns), each row the same whatever n is."""
    rng = np.random.default_rng(seed)
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(n, cols, rng)
    y = w.matmul(x)
    check_product(name, w32, mag, x, y)
    np.testing.assert_array_equal(y[-1], w.matmul(x[-1]))


@pytest.mark.parametrize("name", FLOAT_TYPES)
def test_float_matvec_wide_rows(isa, float_kernel, name):
    """Rows wider than the stack buffer of activations in BF16 lane order (4096 floats per
    call): the kernel then reorders the activations itself, with the same result."""
    rng = np.random.default_rng(7)
    rows, cols = 37, 32 * 32 + 27  # and every column tail: 16, 8, then 3 single columns
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(5, cols, rng)  # 5 * 1051 floats: past the buffer
    y = w.matmul(x, n_threads=2)
    check_product(name, w32, mag, x, y)
    for t in range(5):
        np.testing.assert_array_equal(y[t], w.matmul(x[t]))  # 1051 floats: in the buffer


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_long_prompt(isa, name):
    """More activation rows than one chunk (256): the chunks must cover every row once."""
    rng = np.random.default_rng(5)
    w, w32, mag = make_weight(name, 13, 256, rng)
    x = random_activations(301, 256, rng)
    y = np.full((301, 13), np.nan, np.float32)
    w.matmul(x, out=y, n_threads=2)
    check_product(name, w32, mag, x, y)


def test_zero_activations_give_bias(isa):
    rng = np.random.default_rng(1)
    for name in QUANT_TYPES + FLOAT_TYPES:
        w, _, _ = make_weight(name, 9, 256, rng)
        bias = rng.standard_normal(9).astype(np.float32)
        np.testing.assert_array_equal(w.matmul(np.zeros((3, 256), np.float32), bias=bias), np.tile(bias, (3, 1)))


def test_real_model_tensors(isa):
    """Actual GGUF tensors (memory-mapped, read-only) of the two reference models."""
    import gguf
    from conftest import cached_model

    rng = np.random.default_rng(0)
    wanted = {
        "SmolLM2-135M-Instruct.Q4_1.gguf": ["blk.0.ffn_down.weight", "blk.3.attn_k.weight", "token_embd.weight"],
        "gemma-3-270m-q4_k_m.gguf": ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight",
                                     "blk.0.attn_output.weight", "blk.0.ffn_up.weight"],
    }
    seen = set()
    for file, names in wanted.items():
        reader = gguf.GGUFReader(cached_model(file))
        tensors = {t.name: t for t in reader.tensors}
        for tname in names:
            t = tensors[tname]
            cols, rows = (int(v) for v in t.shape)
            name = t.tensor_type.name
            seen.add(name)
            data = t.data if t.data.shape[0] <= 4096 else t.data[:4096]  # the embedding: first rows
            rows = data.shape[0]
            w = _matmul.Weight(int(t.tensor_type), (rows, cols), data)
            assert (w.data is data) != w.repacked  # referenced as is, or repacked (a copy)
            raw = np.asarray(data).reshape(rows, -1)
            w32 = gguf.quants.dequantize(raw, t.tensor_type).reshape(rows, cols)
            mag = term_magnitude(name, raw.reshape(-1, BLOCK_LAYOUT[GGMLType[name]][1]), rows, cols)
            x = rng.standard_normal((5, cols)).astype(np.float32)
            check_product(name, w32, mag, x, w.matmul(x, n_threads=2))
            check_product(name, w32, mag, x[:1], w.matmul(x[0])[None, :])
            np.testing.assert_array_equal(w.get_row(rows // 2), w32[rows // 2])
    assert seen == {"Q4_1", "Q8_0", "Q4_K", "Q5_0", "Q6_K"}


def test_input_validation():
    rng = np.random.default_rng(0)
    w, _, _ = make_weight("Q4_1", 5, 64, rng)
    good = np.zeros((2, 64), np.float32)
    with pytest.raises(ShapeError, match="float32"):
        w.matmul(good.astype(np.float64))
    with pytest.raises(ShapeError, match="float32"):
        w.matmul([0.0] * 64)
    with pytest.raises(ShapeError, match="shape"):
        w.matmul(np.zeros((2, 63), np.float32))
    with pytest.raises(ShapeError, match="shape"):
        w.matmul(np.zeros((1, 2, 64), np.float32))
    with pytest.raises(ShapeError, match="contiguous"):
        w.matmul(np.zeros((2, 128), np.float32)[:, ::2])
    with pytest.raises(ShapeError, match="out must have shape"):
        w.matmul(good, out=np.zeros((2, 4), np.float32))
    with pytest.raises(ShapeError, match="out must be a float32"):
        w.matmul(good, out=np.zeros((2, 5), np.float64))
    with pytest.raises(ShapeError, match="accumulate"):
        w.matmul(good, accumulate=True)
    with pytest.raises(ShapeError, match="bias"):
        w.matmul(good, bias=np.zeros(4, np.float32))
    shared = np.zeros((2, 64), np.float32)
    with pytest.raises(ShapeError, match="overlap"):
        w.matmul(shared, out=shared[:, :5])
    ro = np.zeros((2, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ShapeError, match="writable"):
        w.matmul(good, out=ro)
    x_ro = np.ones(64, np.float32)
    x_ro.flags.writeable = False  # read-only activations are fine
    assert w.matmul(x_ro).shape == (5,)


def test_scratch_bytes_cover_every_path():
    rng = np.random.default_rng(0)
    for name in QUANT_TYPES + FLOAT_TYPES:
        w, _, _ = make_weight(name, 7, 512, rng)
        for n in (1, 2, 7, 8, 64, 300):
            need = w.scratch_bytes(n)
            assert need >= 0
            if name in QUANT_TYPES:  # one int8 code per activation at least
                assert need >= n * 512


def _isa_in_child(value: str) -> subprocess.CompletedProcess:
    """Import the kernels in a fresh process with SMALLMIND_ISA=value; print the paths."""
    code = "from smallmind._core import _matmul; print(_matmul._isa(), _matmul.kernel_paths())"
    env = dict(os.environ, SMALLMIND_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)


def test_isa_env_forces_avx2_for_every_type():
    child = _isa_in_child("avx2")
    assert child.returncode == 0, child.stderr
    level, paths = child.stdout.split(" ", 1)
    assert level == "1"
    assert "avx512" not in paths and "'Q4_1': 'avx2-r8'" in paths and "'Q4_K': 'avx2-r8'" in paths
    assert "'vnni': None" in paths  # no vpdpbusd either: plain AVX2 to measure on any CPU


def test_isa_env_avx512_runs_or_is_refused():
    child = _isa_in_child("avx512")
    if _matmul._detected_isa() >= 2:
        assert child.returncode == 0 and child.stdout.startswith("2 "), child.stderr
    else:
        assert child.returncode != 0
        assert "CPUFeatureError" in child.stderr and "SMALLMIND_ISA=avx512" in child.stderr


def test_isa_env_rejects_unknown_values():
    child = _isa_in_child("avx1024")
    assert child.returncode != 0
    assert "ValueError" in child.stderr and "avx1024" in child.stderr


def test_kernel_paths_name_every_weight_type():
    paths = _matmul.kernel_paths()
    assert paths["cpu"] == {1: "avx2", 2: "avx512"}[_matmul._detected_isa()]
    assert paths["active"] == {1: "avx2", 2: "avx512"}[_matmul._isa()]
    assert paths["vnni"] == {0: None, 1: "avx512-vnni", 2: "avx-vnni", 3: "emulated"}[_matmul._vnni()]
    expected = {t.name for t in _matmul.SUPPORTED_TYPES} - {"Q8_K"}
    assert set(paths["types"]) == expected
    repacked = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"} if _matmul._repack_default() else set()
    for name, path in paths["types"].items():
        # the repacked types run their AVX2 kernels on every ISA (Weight repacks by default)
        expected_path = "avx2-r8" if name in repacked else paths["active"]
        assert path.startswith(expected_path), (name, path)


def test_kernel_path_of_one_weight_says_what_runs_on_the_active_isa():
    active = {1: "avx2", 2: "avx512"}[_matmul._isa()]
    assert _matmul._kernel_path(int(GGMLType.Q4_K), True) == "avx2-r8"
    assert _matmul._kernel_path(int(GGMLType.Q4_K), False) == active + ("-vnni" if active == "avx512" else "")
    small = _matmul._kernel_path(int(GGMLType.F16), False, 1 << 10)
    big = _matmul._kernel_path(int(GGMLType.F16), False, 1 << 30)
    assert small == active and big == ("avx2-stream" if active == "avx512" else "avx2")
