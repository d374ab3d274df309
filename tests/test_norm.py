"""LayerNorm / RMSNorm kernels (smallmind._core._norm) against float64 NumPy references.

Tolerances (stated in the module docstring too), reference computed in float64 from
the same float32 inputs:
* LayerNorm: |y - ref| <= 1e-6 (|w| + |b| + |ref|), including rows whose mean is up to
  1e4 times their spread.
* RMSNorm:   |y - ref| <= 1e-6 |ref|
Residual variants: x + delta is stored bit-exactly (float32 add), and out obeys the
same bounds against the reference norm of that sum.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401  (checks the CPU before the kernels load)
from smallmind._core import _norm as N
from smallmind.errors import ShapeError


def layernorm_ref(x, w, b, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * w.astype(np.float64)
    return y if b is None else y + b.astype(np.float64)


def rmsnorm_ref(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w.astype(np.float64)


def assert_layernorm_close(y, ref, w, b):
    bound = 1e-6 * (np.abs(w) + (0 if b is None else np.abs(b)) + np.abs(ref))
    err = np.abs(y - ref)
    assert np.all(err <= bound), float((err / bound).max())


def assert_rmsnorm_close(y, ref):
    err = np.abs(y - ref)
    assert np.all(err <= 1e-6 * np.abs(ref)), float((err - 1e-6 * np.abs(ref)).max())


rows_shapes = st.one_of(
    st.tuples(st.integers(1, 5000)),
    st.tuples(st.integers(1, 6), st.integers(1, 1200)),
)


@st.composite
def norm_case(draw):
    shape = draw(rows_shapes)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.floats(-3, 3))
    # Mean up to 1e4 spreads away from 0: the float32 cancellation LayerNorm must survive.
    offset = draw(st.sampled_from([0.0, 1.0, -30.0, 1e3, -1e4])) * draw(st.floats(0, 1))
    x = ((rng.standard_normal(shape) + offset) * scale).astype(np.float32)
    n = shape[-1]
    w = (rng.standard_normal(n) + 1.0).astype(np.float32)
    b = draw(st.sampled_from([None, "random"]))
    b = None if b is None else rng.standard_normal(n).astype(np.float32)
    eps = draw(st.sampled_from([1e-5, 1e-6, 0.0, 1e-2]))
    delta = ((rng.standard_normal(shape)) * scale).astype(np.float32)
    return x, delta, w, b, eps


@given(case=norm_case())
def test_layernorm_matches_reference(case):
    x, _, w, b, eps = case
    if eps == 0.0 and x.shape[-1] == 1:
        eps = 1e-5     # var = 0 and eps = 0 is 0/0; covered by its own test
    y = N.layernorm(x, w, b, eps=eps)
    assert y.shape == x.shape and y.dtype == np.float32
    assert_layernorm_close(y, layernorm_ref(x, w, b, np.float32(eps)), w, b)


@given(case=norm_case())
def test_rmsnorm_matches_reference(case):
    x, _, w, _, eps = case
    y = N.rmsnorm(x, w, eps=eps)
    assert_rmsnorm_close(y, rmsnorm_ref(x, w, np.float32(eps)))


@given(case=norm_case())
def test_residual_layernorm(case):
    x, delta, w, b, eps = case
    eps = eps or 1e-5
    summed = x + delta
    x_work = x.copy()
    y = N.residual_layernorm(x_work, delta, w, b, eps=eps)
    np.testing.assert_array_equal(x_work, summed)          # residual stream updated in place
    assert_layernorm_close(y, layernorm_ref(summed, w, b, np.float32(eps)), w, b)


@given(case=norm_case())
def test_residual_rmsnorm(case):
    x, delta, w, _, eps = case
    summed = x + delta
    x_work = x.copy()
    y = N.residual_rmsnorm(x_work, delta, w, eps=eps)
    np.testing.assert_array_equal(x_work, summed)
    assert_rmsnorm_close(y, rmsnorm_ref(summed, w, np.float32(eps)))


@pytest.mark.parametrize("n", [1, 7, 8, 9, 255, 256, 257, 1000])
def test_aliasing(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n)).astype(np.float32)
    delta = rng.standard_normal((3, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    for norm, args in ((N.layernorm, (w, b)), (N.rmsnorm, (w,))):
        expected = norm(x, *args)
        x2 = x.copy()
        assert norm(x2, *args, out=x2) is x2
        np.testing.assert_array_equal(x2, expected)
    for norm, args in ((N.residual_layernorm, (w, b)), (N.residual_rmsnorm, (w,))):
        x1 = x.copy()
        expected = norm(x1, delta, *args)
        x2 = x.copy()                      # out is x: the sum is overwritten by the norm
        assert norm(x2, delta, *args, out=x2) is x2
        np.testing.assert_array_equal(x2, expected)
        x3, d3 = x.copy(), delta.copy()    # out is delta
        assert norm(x3, d3, *args, out=d3) is d3
        np.testing.assert_array_equal(d3, expected)
        np.testing.assert_array_equal(x3, x1)


def test_rows_are_independent_of_batching():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 300)).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    batched = N.layernorm(x, w)
    for r in range(5):
        np.testing.assert_array_equal(N.layernorm(x[r].copy(), w), batched[r])


def test_constant_rows_and_eps():
    w = np.full(20, 2.0, np.float32)
    b = np.arange(20, dtype=np.float32)
    x = np.full((2, 20), 7.5, np.float32)
    np.testing.assert_array_equal(N.layernorm(x, w, b), np.broadcast_to(b, (2, 20)))
    y = N.layernorm(np.ones((1, 1), np.float32), np.ones(1, np.float32), eps=0.0)
    assert np.isnan(y[0, 0])                         # 0 / sqrt(0): no eps, no answer
    np.testing.assert_array_equal(N.rmsnorm(np.zeros(9, np.float32), np.ones(9, np.float32)),
                                  np.zeros(9, np.float32))
    # eps dominates tiny activations: y = x / sqrt(mean(x^2) + eps)
    x = np.full(16, 1e-4, np.float32)
    np.testing.assert_allclose(N.rmsnorm(x, np.ones(16, np.float32), eps=1e-2),
                               1e-4 / np.sqrt(1e-8 + 1e-2), rtol=1e-6)


def test_nan_propagates_to_its_row_only():
    x = np.ones((3, 40), np.float32)
    x[1, 37] = np.nan
    x[:, ::2] = 2.0
    y = N.layernorm(x, np.ones(40, np.float32))
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))
    y = N.rmsnorm(x, np.ones(40, np.float32))
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))


def test_bad_inputs_raise_typed_errors():
    x = np.ones((2, 8), np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(ShapeError, match=r"\bweight\b.*\(8,\)"):
        N.layernorm(x, np.ones(7, np.float32))
    with pytest.raises(ShapeError, match=r"\bbias\b"):
        N.layernorm(x, w, np.ones(9, np.float32))
    with pytest.raises(ShapeError, match=r"\bweight\b.*1-D"):
        N.rmsnorm(x, np.ones((1, 8), np.float32))
    with pytest.raises(ShapeError, match=r"\bx\b.*1-D to 2-D"):
        N.rmsnorm(np.ones((2, 2, 8), np.float32), w)
    with pytest.raises(ShapeError, match=r"\bx\b.*float32"):
        N.layernorm(x.astype(np.float64), w)
    with pytest.raises(ShapeError, match=r"\bx\b.*C-contiguous"):
        N.layernorm(np.ones((8, 2), np.float32).T, w)
    with pytest.raises(ShapeError, match=r"\bx\b.*at least one value"):
        N.layernorm(np.ones((3, 0), np.float32), np.ones(0, np.float32))
    with pytest.raises(ValueError, match=r"\beps\b"):
        N.layernorm(x, w, eps=-1.0)
    with pytest.raises(ValueError, match=r"\beps\b"):
        N.rmsnorm(x, w, eps=float("nan"))
    with pytest.raises(ShapeError, match=r"\bdelta\b.*shape"):
        N.residual_rmsnorm(x.copy(), np.ones((2, 7), np.float32), w)
    readonly = x.copy()
    readonly.flags.writeable = False
    with pytest.raises(ShapeError, match=r"\bx\b.*writeable"):
        N.residual_layernorm(readonly, x, w)
    with pytest.raises(ShapeError, match=r"\bout\b.*\bweight\b"):
        N.layernorm(w, w, out=w)
    with pytest.raises(ShapeError, match=r"\bx\b.*\bweight\b"):
        xw = np.ones(8, np.float32)
        N.residual_rmsnorm(xw, np.ones(8, np.float32), xw)
    buf = np.zeros(40, np.float32)
    with pytest.raises(ShapeError, match=r"\bx\b overlaps \bdelta\b|\bdelta\b"):
        N.residual_layernorm(buf[:16].reshape(2, 8), buf[4:20].reshape(2, 8), w)
