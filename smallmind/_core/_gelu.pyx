"""GELU activations (tanh form, exact erf form, a fast approximation) and GeGLU.

The ``cdef`` kernels (declared in ``_gelu.pxd``) run without the GIL on raw float32
pointers, eight lanes at a time with the AVX2/FMA helpers of ``_simd.h``; a ragged
tail goes through the same vector code with masked loads and stores, so every
element gets the same arithmetic whatever the array length.

On CPUs with AVX-512F the kernels switch, at import, to 16-lane versions of the same
math (also in ``_simd.h``); ``SMALLMIND_SIMD=avx2`` or ``_set_simd("avx2")`` keeps AVX2.

Errors, measured on both paths over 3M points (``tests/test_gelu.py`` checks each bound):

* ``gelu_tanh`` vs the tanh formula in float64: |error| <= 1e-6 |ref| + 1e-8
  (largest relative error 1e-5, in the far negative tail where |ref| < 1e-4).
* ``gelu_erf`` vs 0.5 x (1 + erf(x / sqrt 2)) in float64: the same bound.
* ``gelu_fast`` vs the erf GELU over x in [-10, 10]: at most 5e-4 (measured 4.75e-4,
  FAST_MAX_ABS_ERROR), almost all of it the tanh formula's own 4.73e-4.
"""

cimport numpy as cnp

from smallmind._core._elementwise cimport (_binary_operands, _check_overlap, _f32_array,
                                           _f32_out, simd_avx512)

cnp.import_array()

# Bound on |gelu_fast(x) - exact erf GELU(x)| over x in [-10, 10] (measured 4.75e-4).
FAST_MAX_ABS_ERROR = 5e-4

cdef extern from "_simd.h" nogil:
    ctypedef float __m256
    ctypedef int __m256i
    __m256 _mm256_loadu_ps(const float* p)
    void _mm256_storeu_ps(float* p, __m256 v)
    __m256 _mm256_maskload_ps(const float* p, __m256i mask)
    void _mm256_maskstore_ps(float* p, __m256i mask, __m256 v)
    __m256 _mm256_mul_ps(__m256 a, __m256 b)
    __m256i sm_tail_mask(Py_ssize_t count)
    __m256 sm_gelu_tanh(__m256 x)
    __m256 sm_gelu_erf(__m256 x)
    __m256 sm_gelu_fast(__m256 x)
    void sm512_gelu_tanh_array(const float* x, float* out, Py_ssize_t n)
    void sm512_gelu_erf_array(const float* x, float* out, Py_ssize_t n)
    void sm512_gelu_fast_array(const float* x, float* out, Py_ssize_t n)
    void sm512_geglu_array(const float* gate, const float* up, float* out, Py_ssize_t n)


# The AVX-512 paths follow the one switch in _elementwise (see simd_avx512 there):
# on when the CPU has AVX-512F, off with SMALLMIND_SIMD=avx2 or _elementwise._set_simd.
from smallmind._core._elementwise import _set_simd, _simd  # noqa: E402,F401  (re-exported)


# Three near-identical loops: Cython cannot pass an inline vector function as a
# parameter without an indirect call per vector, which would stop the inlining.

cdef void gelu_tanh(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef __m256i mask
    if simd_avx512():
        sm512_gelu_tanh_array(x, out, n)
        return
    while i + 16 <= n:
        _mm256_storeu_ps(out + i, sm_gelu_tanh(_mm256_loadu_ps(x + i)))
        _mm256_storeu_ps(out + i + 8, sm_gelu_tanh(_mm256_loadu_ps(x + i + 8)))
        i += 16
    while i < n:
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, sm_gelu_tanh(_mm256_maskload_ps(x + i, mask)))
        i += 8


cdef void gelu_erf(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef __m256i mask
    if simd_avx512():
        sm512_gelu_erf_array(x, out, n)
        return
    while i + 16 <= n:
        _mm256_storeu_ps(out + i, sm_gelu_erf(_mm256_loadu_ps(x + i)))
        _mm256_storeu_ps(out + i + 8, sm_gelu_erf(_mm256_loadu_ps(x + i + 8)))
        i += 16
    while i < n:
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, sm_gelu_erf(_mm256_maskload_ps(x + i, mask)))
        i += 8


cdef void gelu_fast(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef __m256i mask
    if simd_avx512():
        sm512_gelu_fast_array(x, out, n)
        return
    while i + 16 <= n:
        _mm256_storeu_ps(out + i, sm_gelu_fast(_mm256_loadu_ps(x + i)))
        _mm256_storeu_ps(out + i + 8, sm_gelu_fast(_mm256_loadu_ps(x + i + 8)))
        i += 16
    while i < n:
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, sm_gelu_fast(_mm256_maskload_ps(x + i, mask)))
        i += 8


cdef void geglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil:
    _geglu(gate, up, out, n)


# The def wrapper geglu reuses the name for Python, so the body is _geglu.
cdef inline void _geglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef __m256i mask
    if simd_avx512():
        sm512_geglu_array(gate, up, out, n)
        return
    while i < n:
        # sm_tail_mask(>= 8) is all lanes, so one loop covers the body and the tail.
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(sm_gelu_tanh(_mm256_maskload_ps(gate + i, mask)),
                                                          _mm256_maskload_ps(up + i, mask)))
        i += 8


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
    cdef cnp.ndarray vg, vu, vo
    vg, vu, vo = _binary_operands(gate, "gate", up, "up", out)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(vg)
    with nogil:
        _geglu(<const float*>cnp.PyArray_DATA(vg), <const float*>cnp.PyArray_DATA(vu),
               <float*>cnp.PyArray_DATA(vo), n)
    return vo
