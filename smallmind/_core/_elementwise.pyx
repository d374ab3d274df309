"""Elementwise float32 kernels: add, scale, SwiGLU and row softmax.

The ``cdef`` kernels (declared in ``_elementwise.pxd``) take raw pointers and run
without the GIL; the ``def`` wrappers below check their arrays once and call them.
This module also holds the boundary checks that ``_gelu`` and ``_norm`` share.

Accuracy: add and scale are exact float32 operations; swiglu's silu is within a few
ulp (relative 3e-7), silu(-inf) = 0; softmax is within (1e-6 + 1e-7 |x - max|)
relative of a float64 softmax (tests/test_elementwise.py).
"""
cimport numpy as cnp
from libc.math cimport INFINITY

from smallmind._core._simd cimport (SMM_ISA_AVX2, SMM_ISA_AVX512, __m256, __m256i, _mm256_add_ps,
                                    _mm256_and_ps, _mm256_blendv_ps, _mm256_castsi256_ps,
                                    _mm256_loadu_ps, _mm256_maskload_ps, _mm256_maskstore_ps,
                                    _mm256_max_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps,
                                    _mm256_storeu_ps, _mm256_sub_ps, sm512_swiglu_array, sm_exp,
                                    sm_hmax, sm_hsum, sm_swiglu_array, sm_tail_mask, smm_isa,
                                    smm_set_isa)

import numpy as np

from smallmind.errors import ShapeError

cnp.import_array()


# swiglu and the GELUs of _gelu take their AVX-512 paths when the one instruction-set
# switch (_simd_dispatch.h, shared with the matmul kernels) says so; add, scale and
# softmax stay AVX2: they are limited by memory or already fast.
cdef bint simd_avx512() noexcept nogil:
    return smm_isa() == SMM_ISA_AVX512


def _simd():
    """The instruction set the dispatching kernels use (here and in _gelu): "avx512" or "avx2"."""
    return "avx512" if simd_avx512() else "avx2"


def _set_simd(name):
    """Switch this module's dispatching kernels to "avx2" or "avx512" (tests, benchmarks).

    Returns the previous setting. Asking for "avx512" on a CPU without it raises ValueError.
    """
    previous = _simd()
    if name == "avx2":
        smm_set_isa(SMM_ISA_AVX2)
    elif name == "avx512":
        if smm_set_isa(SMM_ISA_AVX512) != SMM_ISA_AVX512:
            raise ValueError("this CPU has no AVX-512 path")
    else:
        raise ValueError(f"simd must be 'avx2' or 'avx512', got {name!r}")
    return previous


# ---------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------

cdef void add(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil:
    _add(a, b, out, n)


cdef void scale(const float* a, float s, float* out, Py_ssize_t n) noexcept nogil:
    _scale(a, s, out, n)


cdef void swiglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil:
    _swiglu(gate, up, out, n)


# The def wrappers below reuse the names add, scale and swiglu for Python, so the
# bodies live in _-prefixed inline functions that both sides call.

cdef inline void _add(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef __m256i mask
    # Four vectors a step: add is limited by loads and stores, not arithmetic.
    while i + 32 <= n:
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)))
        _mm256_storeu_ps(out + i + 8, _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8)))
        _mm256_storeu_ps(out + i + 16, _mm256_add_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16)))
        _mm256_storeu_ps(out + i + 24, _mm256_add_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24)))
        i += 32
    while i + 8 <= n:
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)))
        i += 8
    if i < n:
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, _mm256_add_ps(_mm256_maskload_ps(a + i, mask),
                                                          _mm256_maskload_ps(b + i, mask)))


cdef inline void _scale(const float* a, float s, float* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef __m256i mask
    cdef __m256 vs = _mm256_set1_ps(s)
    while i + 32 <= n:
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), vs))
        _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(_mm256_loadu_ps(a + i + 8), vs))
        _mm256_storeu_ps(out + i + 16, _mm256_mul_ps(_mm256_loadu_ps(a + i + 16), vs))
        _mm256_storeu_ps(out + i + 24, _mm256_mul_ps(_mm256_loadu_ps(a + i + 24), vs))
        i += 32
    while i + 8 <= n:
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), vs))
        i += 8
    if i < n:
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(_mm256_maskload_ps(a + i, mask), vs))


cdef inline void _swiglu(const float* gate, const float* up, float* out, Py_ssize_t n) noexcept nogil:
    if simd_avx512():
        sm512_swiglu_array(gate, up, out, n)
    else:
        sm_swiglu_array(gate, up, out, n)


cdef void softmax_inplace(float* x, Py_ssize_t n) noexcept nogil:
    softmax_row(x, x, n)


cdef void softmax_row(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    """exp(x - max) / sum, in three passes over a row that normally sits in L1.

    Rows whose maximum is -inf (every entry -inf) come out uniform, the limit of
    softmax(c, ..., c) as c -> -inf; rows holding +inf share the mass equally between
    their +inf entries; a NaN anywhere makes the row NaN.
    """
    cdef Py_ssize_t i = 0, block_end, count
    cdef __m256i mask
    cdef __m256 v, e, vmax, acc0, acc1
    cdef float row_max, inv
    cdef double total = 0.0
    if n <= 0:
        return

    vmax = _mm256_set1_ps(-INFINITY)
    while i + 8 <= n:
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i))
        i += 8
    if i < n:
        mask = sm_tail_mask(n - i)
        # Masked-off lanes load as 0, which must not win the max: make them -inf.
        v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(x + i, mask),
                             _mm256_castsi256_ps(mask))
        vmax = _mm256_max_ps(vmax, v)
    row_max = sm_hmax(vmax)

    if row_max == -INFINITY:
        inv = 1.0 / n
        for i in range(n):
            out[i] = inv
        return
    if row_max == INFINITY:
        # The limit of softmax as the +inf entries grow together. Rare, so scalar.
        count = 0
        for i in range(n):
            if x[i] != x[i]:
                count = -1
                break
            count += x[i] == INFINITY
        inv = 1.0 / count if count > 0 else x[i]    # x[i] is the NaN when count < 0
        for i in range(n):
            out[i] = inv if (count < 0 or x[i] == INFINITY) else 0.0
        return

    # exp pass. The sum is taken in float32 within blocks of 512 and in float64 across
    # blocks, so its relative error stays ~1e-7 however long the row is.
    vmax = _mm256_set1_ps(row_max)
    i = 0
    while i < n:
        block_end = min(i + 512, n)
        acc0 = _mm256_setzero_ps()
        acc1 = _mm256_setzero_ps()
        while i + 16 <= block_end:
            e = sm_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax))
            _mm256_storeu_ps(out + i, e)
            acc0 = _mm256_add_ps(acc0, e)
            e = sm_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vmax))
            _mm256_storeu_ps(out + i + 8, e)
            acc1 = _mm256_add_ps(acc1, e)
            i += 16
        while i + 8 <= block_end:
            e = sm_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax))
            _mm256_storeu_ps(out + i, e)
            acc0 = _mm256_add_ps(acc0, e)
            i += 8
        if i < block_end:
            mask = sm_tail_mask(block_end - i)
            e = sm_exp(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vmax))
            _mm256_maskstore_ps(out + i, mask, e)
            acc0 = _mm256_add_ps(acc0, _mm256_and_ps(e, _mm256_castsi256_ps(mask)))
            i = block_end
        total += sm_hsum(_mm256_add_ps(acc0, acc1))

    # total >= 1 (the max entry contributes exp(0)), unless NaN, which then spreads.
    _scale(out, <float>(1.0 / total), out, n)


# ---------------------------------------------------------------------------------
# Boundary checks (shared with _gelu and _norm through _elementwise.pxd)
# ---------------------------------------------------------------------------------

cdef str _describe(object array):
    if isinstance(array, np.ndarray):
        return f"{array.dtype} array of shape {array.shape}"
    return type(array).__name__


cdef cnp.ndarray _f32_array(object array, str name, int min_ndim, int max_ndim, bint writable):
    if not cnp.PyArray_Check(array):
        raise ShapeError(f"{name} must be a numpy float32 array, got {_describe(array)}")
    cdef cnp.ndarray arr = <cnp.ndarray>array
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise ShapeError(f"{name} must be a native float32 array, got {_describe(array)}")
    cdef int ndim = cnp.PyArray_NDIM(arr)
    if ndim < min_ndim or ndim > max_ndim:
        if min_ndim == max_ndim:
            wanted = f"{min_ndim}-D"
        else:
            wanted = f"{min_ndim}-D to {max_ndim}-D"
        raise ShapeError(f"{name} must be {wanted}, got shape {(<object>arr).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ShapeError(f"{name} must be C-contiguous (use numpy.ascontiguousarray), "
                         f"got strides {(<object>arr).strides} for shape {(<object>arr).shape}")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ShapeError(f"{name} must be writeable")
    return arr


cdef cnp.ndarray _f32_out(object out, cnp.ndarray like, str name):
    if out is None:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(like), cnp.PyArray_DIMS(like), cnp.NPY_FLOAT32, 0)
    cdef cnp.ndarray arr = _f32_array(out, name, 0, 32, True)
    if not _same_shape(arr, like):
        raise ShapeError(f"{name} must have shape {(<object>like).shape}, got {(<object>arr).shape}")
    return arr


cdef bint _same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int k, ndim = cnp.PyArray_NDIM(a)
    if ndim != cnp.PyArray_NDIM(b):
        return False
    for k in range(ndim):
        if cnp.PyArray_DIMS(a)[k] != cnp.PyArray_DIMS(b)[k]:
            return False
    return True


cdef int _check_overlap(cnp.ndarray out, str out_name, cnp.ndarray array, str name,
                        bint may_alias) except -1:
    # Both are C-contiguous, so each occupies [data, data + nbytes).
    cdef char* a0 = <char*>cnp.PyArray_DATA(out)
    cdef char* b0 = <char*>cnp.PyArray_DATA(array)
    cdef Py_ssize_t a_len = cnp.PyArray_NBYTES(out), b_len = cnp.PyArray_NBYTES(array)
    if a_len == 0 or b_len == 0 or a0 + a_len <= b0 or b0 + b_len <= a0:
        return 0
    if may_alias and a0 == b0 and a_len == b_len:
        return 0
    if may_alias:
        raise ShapeError(f"{out_name} overlaps {name} without being the same array; "
                         f"pass {out_name}={name} for in-place or a separate array")
    raise ShapeError(f"{out_name} must not share memory with {name}")


cdef cnp.ndarray _apply_binary(binary_kernel kernel, object a, str a_name, object b, str b_name,
                               object out):
    cdef cnp.ndarray va = _f32_array(a, a_name, 0, 32, False)
    cdef cnp.ndarray vb = _same_shape_input(b, b_name, va, a_name)
    cdef cnp.ndarray vo = _f32_out(out, va, "out")
    _check_overlap(vo, "out", va, a_name, True)
    _check_overlap(vo, "out", vb, b_name, True)
    cdef const float* pa = <const float*>cnp.PyArray_DATA(va)
    cdef const float* pb = <const float*>cnp.PyArray_DATA(vb)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(va)
    with nogil:
        kernel(pa, pb, po, n)
    return vo


cdef cnp.ndarray _same_shape_input(object array, str name, cnp.ndarray like, str like_name):
    cdef cnp.ndarray arr = _f32_array(array, name, 0, 32, False)
    if not _same_shape(arr, like):
        raise ShapeError(f"{name} must have the shape of {like_name} {(<object>like).shape}, "
                         f"got {(<object>arr).shape}")
    return arr


# ---------------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------------

def add(a, b, out=None):
    """out = a + b for float32 C-contiguous arrays of the same shape (no broadcasting).

    ``out`` may be ``a`` or ``b`` (in place). Returns ``out``.
    """
    return _apply_binary(_add, a, "a", b, "b", out)


def scale(a, s, out=None):
    """out = a * s for a float32 C-contiguous array and a Python number. Returns ``out``."""
    cdef float factor = s
    cdef cnp.ndarray va = _f32_array(a, "a", 0, 32, False)
    cdef cnp.ndarray vo = _f32_out(out, va, "out")
    _check_overlap(vo, "out", va, "a", True)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(va)
    with nogil:
        _scale(<const float*>cnp.PyArray_DATA(va), factor, <float*>cnp.PyArray_DATA(vo), n)
    return vo


def swiglu(gate, up, out=None):
    """out = silu(gate) * up = gate * sigmoid(gate) * up, elementwise (LLaMA's MLP gate).

    silu is accurate to a few float32 ulp (relative); silu(-inf) = 0, silu(+inf) = inf.
    ``out`` may be ``gate`` or ``up``. Returns ``out``.
    """
    return _apply_binary(_swiglu, gate, "gate", up, "up", out)


def softmax(x, out=None, axis=-1):
    """Softmax along the last axis of a 1-D or 2-D float32 array (each row on its own).

    Stable: the row maximum is subtracted first. -inf entries get probability 0; a row
    that is all -inf comes out uniform; +inf entries share the row's mass; NaN spreads
    to its row. ``out`` may be ``x``. Returns ``out``.
    """
    cdef cnp.ndarray vx = _f32_array(x, "x", 1, 2, False)
    cdef int ndim = cnp.PyArray_NDIM(vx)
    if axis != -1 and axis != ndim - 1:
        raise ShapeError(f"softmax works along the last axis only; axis={axis!r} "
                         f"is not the last axis of a {ndim}-D x")
    cdef cnp.ndarray vo = _f32_out(out, vx, "out")
    _check_overlap(vo, "out", vx, "x", True)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(vx)[ndim - 1]
    cdef Py_ssize_t rows = 1 if ndim == 1 else cnp.PyArray_DIMS(vx)[0]
    cdef const float* px = <const float*>cnp.PyArray_DATA(vx)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    cdef Py_ssize_t r
    with nogil:
        for r in range(rows):
            softmax_row(px + r * n, po + r * n, n)
    return vo
