"""Elementwise kernels (smallmind._core._elementwise) against NumPy references.

Tolerances:
* add, scale: bit-exact against NumPy's float32 a + b and a * float32(s).
* swiglu vs float64 silu(gate) * up:    |y - ref| <= 1e-6 |ref| + 1e-30
* softmax vs float64 softmax:           |y - ref| <= (1e-6 + 1e-7 |x - max|) ref + 1e-30,
  rows summing to 1 +- 1e-6; the |x - max| term is the rounding of that float32
  difference (half an ulp, 6e-8 relative), which exp turns into a relative error.
SwiGLU runs on the AVX2 path and, where the CPU has it, the AVX-512 path.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401  (checks the CPU before the kernels load)
from smallmind._core import _elementwise as E
from smallmind.errors import ShapeError


def _simd_paths():
    paths = ["avx2"]
    previous = E._simd()
    try:
        E._set_simd("avx512")
        paths.append("avx512")
    except ValueError:
        pass
    finally:
        E._set_simd(previous)
    return paths


@pytest.fixture(scope="module", params=_simd_paths())
def simd(request):
    previous = E._set_simd(request.param)
    yield request.param
    E._set_simd(previous)


shapes = st.one_of(
    st.tuples(st.integers(1, 5000)),
    st.tuples(st.integers(1, 7), st.integers(1, 700)),
    st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 40)),
)


def _data(rng, shape, log_scale):
    return (rng.standard_normal(shape) * 10.0**log_scale).astype(np.float32)


# --- add / scale --------------------------------------------------------------------

@given(shape=shapes, log_scale=st.floats(-30, 30), seed=st.integers(0, 2**32 - 1))
def test_add_is_exact(shape, log_scale, seed):
    rng = np.random.default_rng(seed)
    a, b = _data(rng, shape, log_scale), _data(rng, shape, log_scale)
    np.testing.assert_array_equal(E.add(a, b), a + b)


def test_add_in_place_and_specials():
    a = np.array([1.0, np.inf, -np.inf, np.nan, 3e38, 5.0, 6.0, 7.0, 8.0, 9.0], np.float32)
    b = np.array([2.0, 1.0, 1.0, 1.0, 3e38, -5.0, 1.0, 1.0, 1.0, -np.inf], np.float32)
    with np.errstate(over="ignore"):
        expected = a + b
    a1 = a.copy()
    assert E.add(a1, b, out=a1) is a1
    np.testing.assert_array_equal(a1, expected)
    b1 = b.copy()
    assert E.add(a, b1, out=b1) is b1
    np.testing.assert_array_equal(b1, expected)


@given(shape=shapes, s=st.floats(-1e6, 1e6, allow_nan=False), seed=st.integers(0, 2**32 - 1))
def test_scale_is_exact(shape, s, seed):
    rng = np.random.default_rng(seed)
    a = _data(rng, shape, 2)
    np.testing.assert_array_equal(E.scale(a, s), a * np.float32(s))
    a2 = a.copy()
    assert E.scale(a2, s, out=a2) is a2
    np.testing.assert_array_equal(a2, a * np.float32(s))


# --- swiglu --------------------------------------------------------------------------

def swiglu_ref(gate, up):
    g = gate.astype(np.float64)
    with np.errstate(over="ignore"):
        return g / (1.0 + np.exp(-g)) * up.astype(np.float64)


@given(shape=shapes, log_scale=st.floats(-3, 2), seed=st.integers(0, 2**32 - 1))
def test_swiglu_matches_reference(simd, shape, log_scale, seed):
    rng = np.random.default_rng(seed)
    gate, up = _data(rng, shape, log_scale), _data(rng, shape, 0)
    ref = swiglu_ref(gate, up)
    err = np.abs(E.swiglu(gate, up) - ref)
    assert np.all(err <= 1e-6 * np.abs(ref) + 1e-30), float((err / np.abs(ref)).max())


def test_swiglu_specials_and_aliasing(simd):
    gate = np.array([np.inf, -np.inf, np.nan, 0.0, 100.0, -100.0, 3e38, -3e38, 1.0], np.float32)
    up = np.ones_like(gate)
    y = E.swiglu(gate, up)
    assert y[0] == np.inf and y[1] == 0.0 and np.isnan(y[2]) and y[3] == 0.0
    assert y[4] == 100.0 and abs(y[5]) < 1e-40 and y[6] == 3e38 and y[7] == 0.0
    rng = np.random.default_rng(5)
    gate, up = _data(rng, (3, 45), 0), _data(rng, (3, 45), 0)
    expected = E.swiglu(gate, up)
    g2 = gate.copy()
    np.testing.assert_array_equal(E.swiglu(g2, up, out=g2), expected)
    u2 = up.copy()
    np.testing.assert_array_equal(E.swiglu(gate, u2, out=u2), expected)
    # The tail takes the same vector path, so results do not depend on length.
    for k in (1, 7, 9, 44):
        np.testing.assert_array_equal(E.swiglu(gate[0, :k].copy(), up[0, :k].copy()), expected[0, :k])


# --- softmax -------------------------------------------------------------------------

def softmax_ref(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@given(shape=st.one_of(st.tuples(st.integers(1, 5000)),
                       st.tuples(st.integers(1, 9), st.integers(1, 700))),
       log_scale=st.floats(-3, 2), offset=st.floats(-1e4, 1e4), seed=st.integers(0, 2**32 - 1))
def test_softmax_matches_reference(shape, log_scale, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 10.0**log_scale + offset).astype(np.float32)
    ref = softmax_ref(x)
    y = E.softmax(x)
    spread = np.abs(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    assert np.all(np.abs(y - ref) <= (1e-6 + 1e-7 * spread) * ref + 1e-30)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-6)
    x2 = x.copy()
    assert E.softmax(x2, out=x2) is x2
    np.testing.assert_array_equal(x2, y)


def test_softmax_masked_and_degenerate_rows():
    n = 37
    x = np.random.default_rng(2).standard_normal((6, n)).astype(np.float32)
    x[0, ::3] = -np.inf                      # causal-mask style -inf entries
    x[1, :] = -np.inf                        # fully masked row
    x[2, :] = 4.25                           # all equal
    x[3, [4, 30]] = np.inf                   # two +inf entries
    x[4, 33] = np.nan                        # NaN in the tail
    x[5, :] = 3e38                           # huge but equal
    y = E.softmax(x)
    assert np.all(y[0, ::3] == 0.0)
    np.testing.assert_allclose(y[0], softmax_ref(x[0:1])[0], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(y[1], 1.0 / n, rtol=1e-6)
    np.testing.assert_allclose(y[2], 1.0 / n, rtol=1e-6)
    assert y[3, 4] == 0.5 and y[3, 30] == 0.5 and np.count_nonzero(y[3]) == 2
    assert np.all(np.isnan(y[4]))
    np.testing.assert_allclose(y[5], 1.0 / n, rtol=1e-6)
    assert np.all(np.isfinite(y[[0, 1, 2, 3, 5]]))


def test_softmax_extreme_spread():
    x = np.array([0.0, -50.0, -90.0, -200.0, -3e38, 80.0, 88.0, 1e30], np.float32)
    y = E.softmax(x)
    assert y[-1] == 1.0 and np.all(y[:-1] == 0.0)
    x = np.array([0.0, -50.0, -87.0, 10.0], np.float32)
    np.testing.assert_allclose(E.softmax(x), softmax_ref(x), rtol=1e-6, atol=1e-30)


# --- boundary checks -------------------------------------------------------------------

def test_bad_inputs_raise_typed_errors():
    a = np.ones(10, np.float32)
    with pytest.raises(ShapeError, match=r"\bb\b.*shape"):
        E.add(a, np.ones(11, np.float32))
    with pytest.raises(ShapeError, match=r"\ba\b.*float32"):
        E.add(np.ones(10), a)
    with pytest.raises(ShapeError, match=r"\bb\b.*C-contiguous"):
        E.add(a, np.ones(20, np.float32)[::2])
    with pytest.raises(ShapeError, match=r"\bout\b.*shape"):
        E.add(a, a, out=np.ones(9, np.float32))
    with pytest.raises(ShapeError, match=r"\bup\b"):
        E.swiglu(a, np.ones((2, 5), np.float32))
    with pytest.raises(ShapeError, match=r"\bgate\b"):
        E.swiglu(None, a)
    with pytest.raises(ShapeError, match=r"\bout\b"):
        E.scale(a, 2.0, out=np.ones(10, np.float16))
    with pytest.raises(TypeError):
        E.scale(a, "2")
    with pytest.raises(ShapeError, match="axis"):
        E.softmax(np.ones((3, 4), np.float32), axis=0)
    with pytest.raises(ShapeError, match=r"\bx\b.*1-D to 2-D"):
        E.softmax(np.ones((2, 3, 4), np.float32))
    buf = np.zeros(30, np.float32)
    with pytest.raises(ShapeError, match=r"\bout\b overlaps \ba\b"):
        E.add(buf[:10], a, out=buf[1:11])
    readonly = np.ones(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ShapeError, match="writeable"):
        E.softmax(readonly, out=readonly)
