"""GELU kernels (smallmind._core._gelu) against float64 NumPy references.

Tolerances (the module docstring states the same ones):
* "tanh" vs the tanh formula in float64:  |y - ref| <= 1e-6 |ref| + 1e-8
* "none" vs 0.5 x (1 + erf(x / sqrt 2)):    |y - ref| <= 1e-6 |ref| + 1e-8
* "fast" vs the erf GELU on [-10, 10]:       |y - ref| <= FAST_MAX_ABS_ERROR (5e-4)
Every test runs on the AVX2 path and, where the CPU has it, the AVX-512 path.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401  (checks the CPU before the kernels load)
from smallmind._core import _gelu
from smallmind.errors import ShapeError

RTOL, ATOL = 1e-6, 1e-8
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def gelu_tanh_ref(x):
    x = np.asarray(x, np.float64)
    two_u = 2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-two_u))          # = 0.5 x (1 + tanh(u)), no cancellation


def gelu_erf_ref(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * _erfc(-x / math.sqrt(2.0))     # = 0.5 x (1 + erf(x / sqrt 2))


REFERENCES = {"tanh": gelu_tanh_ref, "none": gelu_erf_ref}


def _simd_paths():
    paths = ["avx2"]
    previous = _gelu._simd()
    try:
        _gelu._set_simd("avx512")
        paths.append("avx512")
    except ValueError:
        pass
    finally:
        _gelu._set_simd(previous)
    return paths


@pytest.fixture(scope="module", params=_simd_paths(), autouse=True)
def simd(request):
    previous = _gelu._set_simd(request.param)
    yield request.param
    _gelu._set_simd(previous)


shapes = st.one_of(
    st.tuples(st.integers(1, 5000)),
    st.tuples(st.integers(1, 7), st.integers(1, 700)),
)


@given(shape=shapes, mode=st.sampled_from(["tanh", "none"]),
       log_scale=st.floats(-3, 3), seed=st.integers(0, 2**32 - 1))
def test_gelu_matches_float64_reference(shape, mode, log_scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 10.0**log_scale).astype(np.float32)
    y = _gelu.gelu(x, approximate=mode)
    ref = REFERENCES[mode](x)
    assert y.shape == x.shape and y.dtype == np.float32
    err = np.abs(y - ref)
    assert np.all(err <= RTOL * np.abs(ref) + ATOL), float((err - RTOL * np.abs(ref)).max())


@pytest.mark.parametrize("mode", ["tanh", "none"])
def test_gelu_dense_grid(mode):
    # Every float32 step near 0 and a fine grid out to the tails, where cancellation
    # in 1 + tanh / 1 + erf would show.
    x = np.concatenate([np.linspace(-12, 12, 240_001), np.linspace(-1e-3, 1e-3, 2001),
                        [1e-30, -1e-30, 1e5, -1e5, 3e18, 1e30]]).astype(np.float32)
    ref = REFERENCES[mode](x)
    err = np.abs(_gelu.gelu(x, approximate=mode) - ref)
    assert np.all(err <= RTOL * np.abs(ref) + ATOL), float((err - RTOL * np.abs(ref)).max())


def test_fast_gelu_stated_bound():
    # The docstring states the bound; FAST_MAX_ABS_ERROR must be that number.
    stated = re.search(r"max abs error ([0-9.e+-]+)", _gelu.gelu.__doc__)
    assert stated is not None and float(stated.group(1)) == _gelu.FAST_MAX_ABS_ERROR
    x = np.linspace(-10, 10, 400_001).astype(np.float32)
    err = np.abs(_gelu.gelu(x, approximate="fast") - gelu_erf_ref(x))
    assert err.max() <= _gelu.FAST_MAX_ABS_ERROR
    # Beyond [-10, 10] it still behaves: ~x for large x, ~0 for very negative x.
    far = np.array([10.5, 30.0, 1e6, -10.5, -30.0, -1e6], np.float32)
    assert np.allclose(_gelu.gelu(far, approximate="fast"), [10.5, 30.0, 1e6, 0, 0, 0],
                       rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode", ["tanh", "none", "fast"])
@pytest.mark.parametrize("position", [0, 5, 13, 31])   # in the vector body and in the tail
def test_gelu_special_values(mode, position):
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3e38, -3e38], np.float32)
    for value, expected in zip(specials, [np.inf, 0.0, np.nan, 0.0, 0.0, 3e38, 0.0], strict=False):
        x = np.full(33, 0.5, np.float32)
        x[position] = value
        y = _gelu.gelu(x, approximate=mode)
        if np.isnan(expected):
            assert np.isnan(y[position])
        else:
            assert y[position] == expected, (value, y[position])
        others = np.delete(y, position)
        assert np.all(np.isfinite(others))        # a special value does not leak sideways


@pytest.mark.parametrize("mode", ["tanh", "none", "fast"])
def test_result_does_not_depend_on_position_or_length(mode):
    # The tail goes through the same vector code under a mask, so element k of a long
    # array must equal the same value computed alone.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(77) * 4).astype(np.float32)
    whole = _gelu.gelu(x, approximate=mode)
    for k in (0, 7, 8, 15, 16, 45, 76):
        np.testing.assert_array_equal(_gelu.gelu(x[k:k + 1].copy(), approximate=mode), whole[k:k + 1])
        np.testing.assert_array_equal(_gelu.gelu(x[k:].copy(), approximate=mode), whole[k:])


@pytest.mark.parametrize("mode", ["tanh", "none", "fast"])
def test_gelu_in_place_and_out(mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 37)).astype(np.float32)
    expected = _gelu.gelu(x, approximate=mode)
    out = np.empty_like(x)
    assert _gelu.gelu(x, out, approximate=mode) is out
    np.testing.assert_array_equal(out, expected)
    same = x.copy()
    assert _gelu.gelu(same, out=same, approximate=mode) is same
    np.testing.assert_array_equal(same, expected)


def test_gelu_empty_and_scalar_shapes():
    assert _gelu.gelu(np.empty((0,), np.float32)).shape == (0,)
    assert _gelu.gelu(np.empty((3, 0), np.float32)).shape == (3, 0)
    y = _gelu.gelu(np.array(1.0, np.float32))
    assert y.shape == () and abs(float(y) - gelu_tanh_ref(1.0)) < 1e-6


@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1))
def test_geglu_matches_reference(n, seed):
    rng = np.random.default_rng(seed)
    gate = (rng.standard_normal(n) * 3).astype(np.float32)
    up = (rng.standard_normal(n) * 3).astype(np.float32)
    ref = gelu_tanh_ref(gate) * up.astype(np.float64)
    y = _gelu.geglu(gate, up)
    assert np.all(np.abs(y - ref) <= 2e-6 * np.abs(ref) + 1e-7)
    # out may alias either input
    g2, u2 = gate.copy(), up.copy()
    np.testing.assert_array_equal(_gelu.geglu(g2, u2, out=g2), y)
    g2, u2 = gate.copy(), up.copy()
    np.testing.assert_array_equal(_gelu.geglu(g2, u2, out=u2), y)


def test_bad_inputs_raise_typed_errors():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="approximate.*'exact'"):
        _gelu.gelu(x, approximate="exact")
    with pytest.raises(ValueError, match="approximate"):
        _gelu.gelu(x, approximate=None)
    with pytest.raises(ShapeError, match=r"\bx\b.*float32"):
        _gelu.gelu(np.ones(10, np.float64))
    with pytest.raises(ShapeError, match=r"\bx\b"):
        _gelu.gelu([1.0, 2.0])
    with pytest.raises(ShapeError, match=r"\bx\b.*C-contiguous"):
        _gelu.gelu(np.ones(20, np.float32)[::2])
    with pytest.raises(ShapeError, match=r"\bx\b.*float32"):
        _gelu.gelu(np.ones(10, np.dtype(">f4")))
    with pytest.raises(ShapeError, match=r"\bout\b.*shape"):
        _gelu.gelu(x, out=np.empty(11, np.float32))
    with pytest.raises(ShapeError, match=r"\bout\b.*float32"):
        _gelu.gelu(x, out=np.empty(10, np.float64))
    readonly = np.empty(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ShapeError, match=r"\bout\b.*writeable"):
        _gelu.gelu(x, out=readonly)
    buf = np.zeros(20, np.float32)
    with pytest.raises(ShapeError, match=r"\bout\b overlaps \bx\b"):
        _gelu.gelu(buf[:10], out=buf[5:15])
    with pytest.raises(ShapeError, match=r"\bup\b.*shape"):
        _gelu.geglu(x, np.ones(9, np.float32))
    with pytest.raises(ShapeError, match=r"\bgate\b"):
        _gelu.geglu(np.ones(10, np.int32), x)


def test_simd_switch_validates():
    with pytest.raises(ValueError, match="sse"):
        _gelu._set_simd("sse")
