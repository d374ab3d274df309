"""LayerNorm and RMSNorm over rows of float32 values, plain or fused with the residual add.

The ``cdef`` kernels (declared in ``_norm.pxd``) run without the GIL on one row.

Accuracy. Sums are taken in float32 within blocks of 256 values and in float64
across blocks, so their relative error stays ~1e-7 for any row length. LayerNorm
centres on the row's first value K before summing and subtracts the mean as
(x - K) - m in two float32 steps, with a second-pass correction of m (the
"corrected two-pass" variance); a float32 mean subtracted in one step would lose
~|mean| * 6e-8 / std, which matters for rows whose mean is large next to their spread.
Measured against float64 references on float32 inputs (bounds checked by
tests/test_norm.py; the largest seen is about a quarter of each):
LayerNorm ``|y - ref| <= 1e-6 (|w| + |b| + |ref|)``, even for rows whose mean is 1e4
times their spread (a float32 NumPy composition is off by 5e-4 there);
RMSNorm ``|y - ref| <= 1e-6 |ref|``.

Residual variants do ``x += delta`` (stored) and normalise the sum in the same sweep,
saving a pass over the row compared with an add then a norm.
"""
cimport numpy as cnp
from libc.math cimport isfinite, sqrt

from smallmind._core._elementwise cimport _check_overlap, _f32_array, _f32_out, _same_shape_input
from smallmind._core._simd cimport (__m256, __m256i, _mm256_add_ps, _mm256_and_ps, _mm256_castsi256_ps,
                                    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_maskload_ps,
                                    _mm256_maskstore_ps, _mm256_mul_ps, _mm256_set1_ps,
                                    _mm256_setzero_ps, _mm256_storeu_ps, _mm256_sub_ps, sm_hsum,
                                    sm_tail_mask)

from smallmind.errors import ShapeError

cnp.import_array()

# Values summed in float32 before the running total moves to float64: each of the
# 4 x 8 accumulator lanes adds 8 values per block, so a block's rounding is ~8 ulp.
cdef enum:
    BLOCK = 256


# ---------------------------------------------------------------------------------
# Row passes. A ragged tail is loaded with a mask and, where it feeds a sum, masked
# again after arithmetic (masked-off lanes load as 0, and 0 - K is not 0).
# ---------------------------------------------------------------------------------

# The sums LayerNorm (squares=False: of x[i] - shift) and RMSNorm (squares=True: of
# x[i]^2) start from. ``squares`` is a constant at every call, so each caller gets its own
# loop with the branches folded away.
cdef inline __m256 _add_term(__m256 acc, __m256 d, bint squares) noexcept nogil:
    return _mm256_fmadd_ps(d, d, acc) if squares else _mm256_add_ps(acc, d)


cdef inline __m256 _term(__m256 v, __m256 vs, bint squares) noexcept nogil:
    return v if squares else _mm256_sub_ps(v, vs)


cdef inline __m256 _tail_term(__m256 v, __m256 vs, __m256i mask, bint squares) noexcept nogil:
    # v's off lanes are 0, so its squares are too; v - shift must be masked again.
    return v if squares else _mm256_and_ps(_mm256_sub_ps(v, vs), _mm256_castsi256_ps(mask))


cdef inline double _sum(const float* x, float shift, bint squares, Py_ssize_t n) noexcept nogil:
    """Sum of x[i]^2 (squares) or of (x[i] - shift)."""
    cdef __m256 a0, a1, a2, a3, vs = _mm256_set1_ps(shift)
    cdef __m256i mask
    cdef double total = 0.0
    cdef Py_ssize_t i = 0, end
    while i < n:
        end = min(i + BLOCK, n)
        a0 = _mm256_setzero_ps(); a1 = _mm256_setzero_ps()
        a2 = _mm256_setzero_ps(); a3 = _mm256_setzero_ps()
        while i + 32 <= end:
            a0 = _add_term(a0, _term(_mm256_loadu_ps(x + i), vs, squares), squares)
            a1 = _add_term(a1, _term(_mm256_loadu_ps(x + i + 8), vs, squares), squares)
            a2 = _add_term(a2, _term(_mm256_loadu_ps(x + i + 16), vs, squares), squares)
            a3 = _add_term(a3, _term(_mm256_loadu_ps(x + i + 24), vs, squares), squares)
            i += 32
        while i < end:
            mask = sm_tail_mask(end - i)
            a0 = _add_term(a0, _tail_term(_mm256_maskload_ps(x + i, mask), vs, mask, squares), squares)
            i += 8
        i = end
        total += sm_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
    return total


cdef inline double _add_and_sum(float* x, const float* delta, float shift, bint squares,
                                Py_ssize_t n) noexcept nogil:
    """x[i] += delta[i] (stored), returning the sum of the new x[i]^2 (squares) or of
    (new x[i] - shift)."""
    cdef __m256 vs = _mm256_set1_ps(shift)
    cdef __m256 a0, a1, v0, v1
    cdef __m256i mask
    cdef double total = 0.0
    cdef Py_ssize_t i = 0, end
    while i < n:
        end = min(i + BLOCK, n)
        a0 = _mm256_setzero_ps(); a1 = _mm256_setzero_ps()
        while i + 16 <= end:
            v0 = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(delta + i))
            v1 = _mm256_add_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(delta + i + 8))
            _mm256_storeu_ps(x + i, v0)
            _mm256_storeu_ps(x + i + 8, v1)
            a0 = _add_term(a0, _term(v0, vs, squares), squares)
            a1 = _add_term(a1, _term(v1, vs, squares), squares)
            i += 16
        while i < end:
            mask = sm_tail_mask(end - i)
            v0 = _mm256_add_ps(_mm256_maskload_ps(x + i, mask), _mm256_maskload_ps(delta + i, mask))
            _mm256_maskstore_ps(x + i, mask, v0)
            a0 = _add_term(a0, _tail_term(v0, vs, mask, squares), squares)
            i += 8
        i = end
        total += sm_hsum(_mm256_add_ps(a0, a1))
    return total


cdef void _centred_sums(const float* x, float shift, float m1, Py_ssize_t n,
                        double* sum_d, double* sum_d2) noexcept nogil:
    """With d = (x[i] - shift) - m1: sum of d and sum of d^2."""
    cdef __m256 vs = _mm256_set1_ps(shift)
    cdef __m256 vm = _mm256_set1_ps(m1)
    cdef __m256 c0, c1, q0, q1, d0, d1
    cdef __m256i mask
    cdef double total_d = 0.0, total_d2 = 0.0
    cdef Py_ssize_t i = 0, end
    while i < n:
        end = min(i + BLOCK, n)
        c0 = _mm256_setzero_ps(); c1 = _mm256_setzero_ps()
        q0 = _mm256_setzero_ps(); q1 = _mm256_setzero_ps()
        while i + 16 <= end:
            d0 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs), vm)
            d1 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vs), vm)
            c0 = _mm256_add_ps(c0, d0)
            c1 = _mm256_add_ps(c1, d1)
            q0 = _mm256_fmadd_ps(d0, d0, q0)
            q1 = _mm256_fmadd_ps(d1, d1, q1)
            i += 16
        while i < end:
            mask = sm_tail_mask(end - i)
            d0 = _mm256_and_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vs), vm),
                               _mm256_castsi256_ps(mask))
            c0 = _mm256_add_ps(c0, d0)
            q0 = _mm256_fmadd_ps(d0, d0, q0)
            i += 8
        i = end
        total_d += sm_hsum(_mm256_add_ps(c0, c1))
        total_d2 += sm_hsum(_mm256_add_ps(q0, q1))
    sum_d[0] = total_d
    sum_d2[0] = total_d2


cdef void _layernorm_finish(const float* x, float shift, double sum_shifted, const float* w,
                            const float* b, float* out, Py_ssize_t n, float eps) noexcept nogil:
    """Second and third passes of LayerNorm, given sum(x - shift) from the first."""
    cdef double sum_d, sum_d2, correction, var
    cdef float m1 = <float>(sum_shifted / n)
    _centred_sums(x, shift, m1, n, &sum_d, &sum_d2)
    correction = sum_d / n
    var = sum_d2 / n - correction * correction
    if var < 0.0:
        var = 0.0
    cdef float centre = <float>(m1 + correction)
    cdef float rstd = <float>(1.0 / sqrt(var + eps))

    cdef __m256 vs = _mm256_set1_ps(shift)
    cdef __m256 vc = _mm256_set1_ps(centre)
    cdef __m256 vr = _mm256_set1_ps(rstd)
    cdef __m256 t
    cdef __m256i mask
    cdef Py_ssize_t i = 0
    # (x - K) - centre in two steps: see the module docstring.
    if b != NULL:
        while i + 8 <= n:
            t = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs), vc), vr)
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(t, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)))
            i += 8
        if i < n:
            mask = sm_tail_mask(n - i)
            t = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vs), vc), vr)
            _mm256_maskstore_ps(out + i, mask, _mm256_fmadd_ps(t, _mm256_maskload_ps(w + i, mask),
                                                                _mm256_maskload_ps(b + i, mask)))
    else:
        while i + 8 <= n:
            t = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs), vc), vr)
            _mm256_storeu_ps(out + i, _mm256_mul_ps(t, _mm256_loadu_ps(w + i)))
            i += 8
        if i < n:
            mask = sm_tail_mask(n - i)
            t = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vs), vc), vr)
            _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(t, _mm256_maskload_ps(w + i, mask)))


cdef void _rmsnorm_finish(const float* x, double sum_squares, const float* w, float* out,
                          Py_ssize_t n, float eps) noexcept nogil:
    cdef __m256 vr = _mm256_set1_ps(<float>(1.0 / sqrt(sum_squares / n + eps)))
    cdef __m256i mask
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr),
                                                _mm256_loadu_ps(w + i)))
        i += 8
    if i < n:
        mask = sm_tail_mask(n - i)
        _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(x + i, mask), vr),
                                                          _mm256_maskload_ps(w + i, mask)))


# ---------------------------------------------------------------------------------
# Kernels (contract in _norm.pxd). The def wrappers reuse these names for Python, so
# the bodies live in _-prefixed inline functions that both sides call.
# ---------------------------------------------------------------------------------

cdef void layernorm(const float* x, const float* w, const float* b, float* out,
                    Py_ssize_t n, float eps) noexcept nogil:
    _layernorm(x, w, b, out, n, eps)


cdef inline void _layernorm(const float* x, const float* w, const float* b, float* out,
                            Py_ssize_t n, float eps) noexcept nogil:
    if n <= 0:
        return
    cdef float shift = x[0]
    _layernorm_finish(x, shift, _sum(x, shift, False, n), w, b, out, n, eps)


cdef void rmsnorm(const float* x, const float* w, float* out,
                  Py_ssize_t n, float eps) noexcept nogil:
    _rmsnorm(x, w, out, n, eps)


cdef inline void _rmsnorm(const float* x, const float* w, float* out,
                          Py_ssize_t n, float eps) noexcept nogil:
    if n <= 0:
        return
    _rmsnorm_finish(x, _sum(x, 0.0, True, n), w, out, n, eps)


cdef void residual_layernorm(float* x, const float* delta, const float* w, const float* b,
                             float* out, Py_ssize_t n, float eps) noexcept nogil:
    _residual_layernorm(x, delta, w, b, out, n, eps)


cdef inline void _residual_layernorm(float* x, const float* delta, const float* w, const float* b,
                                     float* out, Py_ssize_t n, float eps) noexcept nogil:
    if n <= 0:
        return
    # Same float32 addition as the vector pass, so shift equals the stored x[0].
    cdef float shift = x[0] + delta[0]
    _layernorm_finish(x, shift, _add_and_sum(x, delta, shift, False, n), w, b, out, n, eps)


cdef void residual_rmsnorm(float* x, const float* delta, const float* w, float* out,
                           Py_ssize_t n, float eps) noexcept nogil:
    _residual_rmsnorm(x, delta, w, out, n, eps)


cdef inline void _residual_rmsnorm(float* x, const float* delta, const float* w, float* out,
                                   Py_ssize_t n, float eps) noexcept nogil:
    if n <= 0:
        return
    _rmsnorm_finish(x, _add_and_sum(x, delta, 0.0, True, n), w, out, n, eps)


# ---------------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------------

cdef cnp.ndarray _rows(object x, str name, bint writable):
    cdef cnp.ndarray vx = _f32_array(x, name, 1, 2, writable)
    if cnp.PyArray_DIMS(vx)[cnp.PyArray_NDIM(vx) - 1] == 0:
        raise ShapeError(f"{name} must have at least one value per row, got shape {(<object>vx).shape}")
    return vx


cdef cnp.ndarray _per_feature(object array, str name, Py_ssize_t n):
    if array is None:
        return None
    cdef cnp.ndarray arr = _f32_array(array, name, 1, 1, False)
    if cnp.PyArray_DIMS(arr)[0] != n:
        raise ShapeError(f"{name} must have shape ({n},) to match the rows of x, got {(<object>arr).shape}")
    return arr


cdef float _epsilon(object eps) except? -1:
    cdef double value = eps
    if not (isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return <float>value


cdef const float* _data_or_null(cnp.ndarray arr):
    if arr is None:
        return NULL
    return <const float*>cnp.PyArray_DATA(arr)


def layernorm(x, weight, bias=None, eps=1e-5, out=None):
    """LayerNorm of each row of a 1-D or 2-D float32 array: (x - mean) / sqrt(var + eps) * weight + bias.

    ``var`` is the biased (population) variance. ``weight`` and ``bias`` have shape
    (n,) for rows of n values; ``bias=None`` adds nothing. ``out`` may be ``x``.
    Returns ``out``.
    """
    cdef cnp.ndarray vx = _rows(x, "x", False)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(vx)[cnp.PyArray_NDIM(vx) - 1]
    cdef cnp.ndarray vw = _per_feature(weight, "weight", n)
    cdef cnp.ndarray vb = _per_feature(bias, "bias", n)
    cdef float e = _epsilon(eps)
    cdef cnp.ndarray vo = _f32_out(out, vx, "out")
    _check_overlap(vo, "out", vx, "x", True)
    _check_overlap(vo, "out", vw, "weight", False)
    if vb is not None:
        _check_overlap(vo, "out", vb, "bias", False)
    cdef Py_ssize_t rows = cnp.PyArray_SIZE(vx) // n, r
    cdef const float* px = <const float*>cnp.PyArray_DATA(vx)
    cdef const float* pw = <const float*>cnp.PyArray_DATA(vw)
    cdef const float* pb = _data_or_null(vb)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    with nogil:
        for r in range(rows):
            _layernorm(px + r * n, pw, pb, po + r * n, n, e)
    return vo


def rmsnorm(x, weight, eps=1e-5, out=None):
    """RMSNorm of each row of a 1-D or 2-D float32 array: x / sqrt(mean(x^2) + eps) * weight.

    ``weight`` has shape (n,) for rows of n values. ``out`` may be ``x``. Returns ``out``.
    """
    cdef cnp.ndarray vx = _rows(x, "x", False)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(vx)[cnp.PyArray_NDIM(vx) - 1]
    cdef cnp.ndarray vw = _per_feature(weight, "weight", n)
    cdef float e = _epsilon(eps)
    cdef cnp.ndarray vo = _f32_out(out, vx, "out")
    _check_overlap(vo, "out", vx, "x", True)
    _check_overlap(vo, "out", vw, "weight", False)
    cdef Py_ssize_t rows = cnp.PyArray_SIZE(vx) // n, r
    cdef const float* px = <const float*>cnp.PyArray_DATA(vx)
    cdef const float* pw = <const float*>cnp.PyArray_DATA(vw)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    with nogil:
        for r in range(rows):
            _rmsnorm(px + r * n, pw, po + r * n, n, e)
    return vo


cdef cnp.ndarray _residual_inputs(object x, object delta):
    """Checks x (written in place) and delta; returns delta as an ndarray."""
    cdef cnp.ndarray vx = <cnp.ndarray>x
    cdef cnp.ndarray vd = _same_shape_input(delta, "delta", vx, "x")
    _check_overlap(vx, "x", vd, "delta", True)
    return vd


def residual_layernorm(x, delta, weight, bias=None, eps=1e-5, out=None):
    """``x += delta`` in place, then ``out = layernorm(x, weight, bias, eps)``, in one sweep.

    The transformer's residual step: x is the residual stream (updated), delta a block's
    output. ``out`` may be ``x`` or ``delta`` but must not share memory with weight or
    bias. Returns ``out``.
    """
    cdef cnp.ndarray vx = _rows(x, "x", True)
    cdef cnp.ndarray vd = _residual_inputs(vx, delta)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(vx)[cnp.PyArray_NDIM(vx) - 1]
    cdef cnp.ndarray vw = _per_feature(weight, "weight", n)
    cdef cnp.ndarray vb = _per_feature(bias, "bias", n)
    cdef float e = _epsilon(eps)
    cdef cnp.ndarray vo = _f32_out(out, vx, "out")
    _check_overlap(vo, "out", vx, "x", True)
    _check_overlap(vo, "out", vd, "delta", True)
    _check_overlap(vx, "x", vw, "weight", False)
    _check_overlap(vo, "out", vw, "weight", False)
    if vb is not None:
        _check_overlap(vx, "x", vb, "bias", False)
        _check_overlap(vo, "out", vb, "bias", False)
    cdef Py_ssize_t rows = cnp.PyArray_SIZE(vx) // n, r
    cdef float* px = <float*>cnp.PyArray_DATA(vx)
    cdef const float* pd = <const float*>cnp.PyArray_DATA(vd)
    cdef const float* pw = <const float*>cnp.PyArray_DATA(vw)
    cdef const float* pb = _data_or_null(vb)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    with nogil:
        for r in range(rows):
            _residual_layernorm(px + r * n, pd + r * n, pw, pb, po + r * n, n, e)
    return vo


def residual_rmsnorm(x, delta, weight, eps=1e-5, out=None):
    """``x += delta`` in place, then ``out = rmsnorm(x, weight, eps)``, in one sweep.

    ``out`` may be ``x`` or ``delta`` but must not share memory with weight. Returns ``out``.
    """
    cdef cnp.ndarray vx = _rows(x, "x", True)
    cdef cnp.ndarray vd = _residual_inputs(vx, delta)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(vx)[cnp.PyArray_NDIM(vx) - 1]
    cdef cnp.ndarray vw = _per_feature(weight, "weight", n)
    cdef float e = _epsilon(eps)
    cdef cnp.ndarray vo = _f32_out(out, vx, "out")
    _check_overlap(vo, "out", vx, "x", True)
    _check_overlap(vo, "out", vd, "delta", True)
    _check_overlap(vx, "x", vw, "weight", False)
    _check_overlap(vo, "out", vw, "weight", False)
    cdef Py_ssize_t rows = cnp.PyArray_SIZE(vx) // n, r
    cdef float* px = <float*>cnp.PyArray_DATA(vx)
    cdef const float* pd = <const float*>cnp.PyArray_DATA(vd)
    cdef const float* pw = <const float*>cnp.PyArray_DATA(vw)
    cdef float* po = <float*>cnp.PyArray_DATA(vo)
    with nogil:
        for r in range(rows):
            _residual_rmsnorm(px + r * n, pd + r * n, pw, po + r * n, n, e)
    return vo
