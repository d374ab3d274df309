"""K-quant products of prompts (n >= 8 activation rows): weight rows are unpacked once into
a panel of 4 rows (_matmul_qk.h) and every activation row runs against it; matrices wider
than the panel (more than 16 blocks of 256 columns) keep the unpacking tiles. Either way a
row must come out bit for bit as a one-row product computes it (what batching and the
prompt/decode split rely on), and within test_matmul's tolerances of the float64 reference,
bias and accumulation included.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_matmul import FIXTURE_OK, check_product, isa, make_weight, random_activations  # noqa: F401

K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]
PANEL_ROWS, PANEL_BLOCKS = 4, 16


@settings(suppress_health_check=FIXTURE_OK)
@given(name=st.sampled_from(K_QUANTS), rows=st.integers(1, 2 * PANEL_ROWS + 3),
       blocks=st.sampled_from([1, 3, PANEL_BLOCKS, PANEL_BLOCKS + 1]), n=st.sampled_from([8, 9, 14, 33]),
       threads=st.sampled_from([1, 2]), with_bias=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_prompt_rows_equal_one_row_products(isa, name, rows, blocks, n, threads, with_bias, seed):  # noqa: F811
    rng = np.random.default_rng(seed)
    cols = 256 * blocks
    w, w32, mag = make_weight(name, rows, cols, rng)
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
