"""K-quant products. Plain layout, prompts (n >= 8 activation rows): weight rows are unpacked
once into a panel of 4 rows (_matmul_qk.h) and every activation row runs against it; matrices
wider than the panel (more than 16 blocks of 256 columns) keep the unpacking tiles. Repacked
at load (the default, _matmul_rk.h): 8-row interleaved groups, one tile kernel for every n,
rows past the last group plain. Either way a row must come out bit for bit as a one-row
product computes it, on any thread count (what batching and the prompt/decode split rely on),
within test_matmul's tolerances of the float64 reference, bias and accumulation included, and
the repacked storage must give back every row of the plain one (repacked K-quants against the
reference and through forced panels: test_matmul_r8.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_matmul import FIXTURE_OK, check_product, isa, make_weight, random_activations  # noqa: F401

from smallmind._core import _matmul
from smallmind.tensors import BLOCK_LAYOUT, GGMLType

K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]
PANEL_ROWS, PANEL_BLOCKS = 4, 16


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(K_QUANTS), rows=st.integers(1, 2 * PANEL_ROWS + 3),
       blocks=st.sampled_from([1, 3, PANEL_BLOCKS, PANEL_BLOCKS + 1]), n=st.sampled_from([8, 9, 14, 33]),
       threads=st.sampled_from([1, 2]), with_bias=st.booleans(), repack=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_prompt_rows_equal_one_row_products(isa, name, rows, blocks, n, threads, with_bias, repack, seed):  # noqa: F811
    rng = np.random.default_rng(seed)
    cols = 256 * blocks
    w, w32, mag = make_weight(name, rows, cols, rng, repack)
    x = random_activations(n, cols, rng)
    bias = rng.standard_normal(rows).astype(np.float32) if with_bias else None
    y0 = rng.standard_normal((n, rows)).astype(np.float32)
    y = y0.copy()
    w.matmul(x, out=y, bias=bias, accumulate=with_bias, n_threads=threads)
    check_product(name, w32, mag, x, y, bias=bias, base=y0.astype(np.float64) if with_bias else None)
    for i in range(n):
        one = y0[i:i + 1].copy()
        w.matmul(x[i:i + 1], out=one, bias=bias, accumulate=with_bias)
        np.testing.assert_array_equal(y[i], one[0], err_msg=f"{name}, row {i} of {n}")


    np.testing.assert_array_equal(w.get_row(rows - 1), w32[rows - 1])  # a tail row when rows % 8


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(K_QUANTS), rows=st.integers(8, 20), blocks=st.integers(1, 3),
       seed=st.integers(0, 2 ** 32 - 1))
def test_repack_round_trip_of_any_bits(name, rows, blocks, seed):
    """Blocks of random bytes (every bit of the packed 6-bit scales and mins, the fifth bits,
    Q6_K's high bit pairs; finite f16 scales): the repacked storage gives back every row of
    the plain one exactly, and the two layouts' products agree to float rounding."""
    rng = np.random.default_rng(seed)
    cols = 256 * blocks
    _, nbytes = BLOCK_LAYOUT[GGMLType[name]]
    data = rng.integers(0, 256, (rows * blocks, nbytes), dtype=np.uint8)
    d_at = [208] if name == "Q6_K" else [0, 2]  # f16 d (and dmin): small finite values
    for at in d_at:
        data[:, at:at + 2] = rng.uniform(-0.01, 0.01, (rows * blocks, 1)).astype(np.float16).view(np.uint8)
    data = data.reshape(-1)
    plain = _matmul.Weight(int(GGMLType[name]), (rows, cols), data, repack=False)
    packed = _matmul.Weight(int(GGMLType[name]), (rows, cols), data)
    assert packed.repacked and not plain.repacked and packed.nbytes == plain.nbytes
    w32 = plain.dequantize()
    np.testing.assert_array_equal(packed.dequantize(), w32)
    for r in range(rows):
        np.testing.assert_array_equal(packed.get_row(r), w32[r])
    x = random_activations(3, cols, rng)
    scale = np.abs(x) @ np.abs(w32).T + 1e-30
    assert np.all(np.abs(packed.matmul(x) - plain.matmul(x)) <= 1e-5 * scale)


@pytest.mark.parametrize("name", K_QUANTS)
def test_repacked_rows_do_not_depend_on_n_or_threads(name):
    """One weight of 8 * 9 + 5 rows (a group count that 2 threads split unevenly, a plain tail),
    n = 1 to 9 and 300 (two activation chunks): every row as alone, on 1 and 2 threads."""
    rng = np.random.default_rng(77)
    rows, cols = 8 * 9 + 5, 256 * 4
    w, w32, mag = make_weight(name, rows, cols, rng)
    x = random_activations(300, cols, rng)
    alone = np.stack([w.matmul(x[i]) for i in range(300)])
    for n in (*range(1, 10), 300):
        for threads in (1, 2):
            np.testing.assert_array_equal(w.matmul(x[:n], n_threads=threads), alone[:n], err_msg=f"n={n}")
    check_product(name, w32, mag, x, alone)
