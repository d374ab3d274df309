"""GELU activations (tanh form, exact erf form, a fast approximation) and GeGLU.

The ``cdef`` kernels (declared in ``_gelu.pxd``) run without the GIL on raw float32
pointers, eight lanes at a time with the AVX2/FMA loops of ``_activations.h``; a ragged
tail goes through the same vector code with masked loads and stores, so every
element gets the same arithmetic whatever the array length.

Where ``_simd_dispatch.h`` chooses AVX-512 (``SMALLMIND_ISA`` can force AVX2), the
kernels run 16-lane versions of the same math (also in ``_activations.h``);
``_set_simd("avx2")`` switches a running process back, for tests and benchmarks.

Errors, measured on both paths over 3M points (``tests/test_gelu.py`` checks each bound):

* ``gelu_tanh`` vs the tanh formula in float64: |error| <= 1e-6 |ref| + 1e-8
  (largest relative error 1e-5, in the far negative tail where |ref| < 1e-4).
* ``gelu_erf`` vs 0.5 x (1 + erf(x / sqrt 2)) in float64: the same bound.
* ``gelu_fast`` vs the erf GELU over x in [-10, 10]: at most 5e-4 (measured 4.75e-4,
  FAST_MAX_ABS_ERROR), almost all of it the tanh formula's own 4.73e-4.
"""

cimport numpy as cnp

from smallmind._core._elementwise cimport (_apply_binary, _check_overlap, _f32_array,
                                           _f32_out, simd_avx512)
from smallmind._core._simd cimport (sm512_geglu_array, sm512_gelu_erf_array, sm512_gelu_fast_array,
                                    sm512_gelu_tanh_array, sm_geglu_array, sm_gelu_erf_array,
                                    sm_gelu_fast_array, sm_gelu_tanh_array)

cnp.import_array()

# Bound on |gelu_fast(x) - exact erf GELU(x)| over x in [-10, 10] (measured 4.75e-4).
FAST_MAX_ABS_ERROR = 5e-4

# The AVX-512 paths follow the one switch (simd_avx512 in _elementwise, which asks
# _simd_dispatch.h); _set_simd and _simd are re-exported for tests and benchmarks.
from smallmind._core._elementwise import _set_simd, _simd  # noqa: E402,F401  (re-exported)


# The loops themselves are C (_activations.h), one per activation and vector width.

cdef void gelu_tanh(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    if simd_avx512():
        sm512_gelu_tanh_array(x, out, n)
    else:
        sm_gelu_tanh_array(x, out, n)


cdef void gelu_erf(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    if simd_avx512():
        sm512_gelu_erf_array(x, out, n)
    else:
        sm_gelu_erf_array(x, out, n)


cdef void gelu_fast(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    if simd_avx512():
        sm512_gelu_fast_array(x, out, n)
    else:
        sm_gelu_fast_array(x, out, n)


cdef void geglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil:
    _geglu(gate, up, out, n)


# The def wrapper geglu reuses the name for Python, so the body is _geglu.
cdef inline void _geglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil:
    if simd_avx512():
        sm512_geglu_array(gate, up, out, n)
    else:
        sm_geglu_array(gate, up, out, n)


cdef int _approximation(object approximate) except -1:
    if isinstance(approximate, str):
        if approximate == "tanh":
            return 0
        if approximate == "none":
            return 1
        if approximate == "fast":
            return 2
    raise ValueError(f"approximate must be 'tanh', 'none' or 'fast', got {approximate!r}")


def gelu(x, out=None, approximate="tanh"):
    """GELU of a float32 C-contiguous array of any shape, elementwise.

    approximate:
      * ``"tanh"`` (default, GPT-2 / Gemma): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
        within 1e-6 |gelu(x)| + 1e-8 of that formula evaluated in float64.
      * ``"none"``: the exact 0.5 x (1 + erf(x / sqrt 2)), within 1e-6 |gelu(x)| + 1e-8.
      * ``"fast"``: the tanh form with a cheaper exp and reciprocal; max abs error 5e-4
        from the exact GELU over x in [-10, 10] (measured 4.75e-4, the tanh formula's
        own 4.73e-4 included); ``FAST_MAX_ABS_ERROR`` holds the bound.

    gelu(+inf) = +inf, gelu(-inf) = 0 and NaN stays NaN in every mode. ``out`` may be
    ``x`` (in place). Returns ``out``.
    """
    cdef int mode = _approximation(approximate)
    cdef cnp.ndarray vx = _f32_array(x, "x", 0, 32, False)
    cdef cnp.ndarray vo = _f32_out(out, vx, "out")
    _check_overlap(vo, "out", vx, "x", True)
    cdef const float* px = <const float*>cnp.PyArray_DATA(vx)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(vx)
    with nogil:
        if mode == 0:
            gelu_tanh(px, po, n)
        elif mode == 1:
            gelu_erf(px, po, n)
        else:
            gelu_fast(px, po, n)
    return vo


def geglu(gate, up, out=None):
    """GeGLU (Gemma's MLP gate): out = gelu_tanh(gate) * up, elementwise.

    ``gate`` and ``up`` are float32 C-contiguous arrays of one shape; ``out`` may be
    either of them. Returns ``out``.
    """
    return _apply_binary(_geglu, gate, "gate", up, "up", out)
