# cython: language_level=3
"""Causal attention over a KV cache, and rotary position embeddings (RoPE).

``attention`` is fused: for each query row and KV head it walks the cached keys in
blocks, computing one block of scores per query head of the group into a per-thread
scratch row, exponentiating them against a running maximum (online softmax) and
accumulating the weighted V rows in registers. No T x T matrix ever exists, the only
memory touched besides q, K, V and out is one score row per thread, and each K/V
block is read from memory once for all the query heads that share it (grouped-query
attention). With one query head per KV head the block is the whole range, i.e. the
classic max-subtracted two-pass softmax.

The SIMD inner loops (dot products against 8 keys at once, the vectorised exp, the
P.V accumulation) are plain C with AVX2/FMA intrinsics, kept in the verbatim block
below; the loops over rows and heads, threading and validation are Cython.

Python API (float32 NumPy arrays, validated once, then the nogil kernels run):

* ``attention(q, k_cache, v_cache, pos0, n_head, n_kv_head, scale=None, window=0,
  out=None, n_threads=1)``
* ``rope(x, pos0, n_heads, head_dim, inv_freq, n_rot=None, neox=False, pos_step=1.0)``
* ``rope_inv_freq(n_rot, theta, scale=1.0)``
* ``scratch_floats(capacity, n_threads)``
"""
import math

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.math cimport cos, sin

from smallmind.errors import ShapeError

cnp.import_array()


cdef extern from *:
    """
    #include <immintrin.h>
    #include <math.h>
    #include <stddef.h>

    #define ATT_INLINE static inline __attribute__((always_inline))

    /* Lanes [0, rem) set, for the last partial vector of a row. */
    ATT_INLINE __m256i att_tail_mask(int rem) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }

    ATT_INLINE float att_hsum(__m256 v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }

    ATT_INLINE float att_hmax(__m256 v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }

    /* The 8 horizontal sums of a0..a7 as one vector [sum a0, ..., sum a7]: three
       rounds of hadd instead of eight separate reductions. */
    ATT_INLINE __m256 att_hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                              __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
        __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
        /* lo = [a0..a3 over lanes 0-3 | a0..a3 over lanes 4-7], hi likewise for a4..a7 */
        return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                             _mm256_permute2f128_ps(lo, hi, 0x31));
    }

    /* exp(x) to about 2 ulp (Cody-Waite range reduction, degree-6 polynomial).
       Inputs are clamped to where the result is a normal float, so the softmax
       never meets denormals or infinities; x goes second to min/max, the operand
       they return for NaN, so a NaN score stays NaN instead of turning finite. */
    ATT_INLINE __m256 att_exp(__m256 x) {
        x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
        __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
        __m256 p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        __m256i e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }

    /* s[t] = scale * dot(q, k[t]) for n keys of hd floats (k rows contiguous);
       returns max_t s[t]. Eight keys per step share each load of q, and their
       eight reductions collapse into one vector store. */
    static float att_scores(const float* q, const float* k, ptrdiff_t n, int hd,
                           float scale, float* s) {
        const int nfull = hd >> 3, rem = hd & 7;
        const __m256i m = att_tail_mask(rem);
        const __m256 vscale = _mm256_set1_ps(scale);
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        float mx = -INFINITY;
        ptrdiff_t t = 0;
        for (; t + 8 <= n; t += 8) {
            const float* k0 = k + t * hd;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0,
                   a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            int d = 0;
            for (int c = 0; c < nfull; c++, d += 8) {
                const __m256 qv = _mm256_loadu_ps(q + d);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + hd + d), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * hd + d), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * hd + d), a3);
                a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 4 * hd + d), a4);
                a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 5 * hd + d), a5);
                a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 6 * hd + d), a6);
                a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 7 * hd + d), a7);
            }
            if (rem) {
                const __m256 qv = _mm256_maskload_ps(q + d, m);
                a0 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + d, m), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + hd + d, m), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + 2 * hd + d, m), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + 3 * hd + d, m), a3);
                a4 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + 4 * hd + d, m), a4);
                a5 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + 5 * hd + d, m), a5);
                a6 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + 6 * hd + d, m), a6);
                a7 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + 7 * hd + d, m), a7);
            }
            const __m256 r = _mm256_mul_ps(att_hsum8(a0, a1, a2, a3, a4, a5, a6, a7), vscale);
            _mm256_storeu_ps(s + t, r);
            vmax = _mm256_max_ps(vmax, r);
        }
        if (t > 0)
            mx = att_hmax(vmax);
        for (; t < n; t++) {
            const float* kt = k + t * hd;
            __m256 a = _mm256_setzero_ps();
            int d = 0;
            for (int c = 0; c < nfull; c++, d += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kt + d), a);
            if (rem)
                a = _mm256_fmadd_ps(_mm256_maskload_ps(q + d, m), _mm256_maskload_ps(kt + d, m), a);
            const float r = att_hsum(a) * scale;
            s[t] = r;
            if (r > mx) mx = r;
        }
        return mx;
    }

    /* s[t] = exp(s[t] - mx) in place; returns the sum. */
    static float att_exp_sum(float* s, ptrdiff_t n, float mx) {
        const __m256 vmx = _mm256_set1_ps(mx);
        __m256 vsum = _mm256_setzero_ps();
        ptrdiff_t t = 0;
        for (; t + 8 <= n; t += 8) {
            const __m256 e = att_exp(_mm256_sub_ps(_mm256_loadu_ps(s + t), vmx));
            _mm256_storeu_ps(s + t, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        if (t < n) {
            const __m256i m = att_tail_mask((int)(n - t));
            /* masked-off lanes load 0 and would add exp(-mx): zero them explicitly */
            __m256 e = att_exp(_mm256_sub_ps(_mm256_maskload_ps(s + t, m), vmx));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
            _mm256_maskstore_ps(s + t, m, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        return att_hsum(vsum);
    }

    /* One chunk of at most 72 output columns of
           out = post * (prev + sum_t p[t] * v[t])   with prev = fresh ? 0 : corr * out,
       the update of the online softmax. Always inlined with constant nv / tail, so
       the accumulators are registers and the column loops unroll completely. A
       narrow chunk (hd <= 32) would leave too few independent FMA chains to hide
       their latency, so it keeps U sets of accumulators over interleaved positions. */
    ATT_INLINE void att_pv_chunk(const float* p, ptrdiff_t n, const float* v, int ldv,
                                 float* out, const int nv, const int tail, __m256i m,
                                 int fresh, float corr, float post) {
        const int width = nv + tail;
        const int U = width == 1 ? 4 : (width <= 4 ? 2 : 1);
        __m256 acc[4][9];
        for (int u = 0; u < 4; u++)
            for (int j = 0; j < 9; j++) acc[u][j] = _mm256_setzero_ps();
        if (!fresh) {
            const __m256 vc = _mm256_set1_ps(corr);
            for (int j = 0; j < nv; j++) acc[0][j] = _mm256_mul_ps(_mm256_loadu_ps(out + 8 * j), vc);
            if (tail) acc[0][nv] = _mm256_mul_ps(_mm256_maskload_ps(out + 8 * nv, m), vc);
        }
        ptrdiff_t t = 0;
        for (; t + U <= n; t += U) {
            for (int u = 0; u < U; u++) {
                const __m256 pt = _mm256_broadcast_ss(p + t + u);
                const float* vt = v + (t + u) * ldv;
                for (int j = 0; j < nv; j++)
                    acc[u][j] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * j), acc[u][j]);
                if (tail)
                    acc[u][nv] = _mm256_fmadd_ps(pt, _mm256_maskload_ps(vt + 8 * nv, m), acc[u][nv]);
            }
        }
        for (; t < n; t++) {
            const __m256 pt = _mm256_broadcast_ss(p + t);
            const float* vt = v + t * ldv;
            for (int j = 0; j < nv; j++)
                acc[0][j] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * j), acc[0][j]);
            if (tail)
                acc[0][nv] = _mm256_fmadd_ps(pt, _mm256_maskload_ps(vt + 8 * nv, m), acc[0][nv]);
        }
        for (int u = 1; u < U; u++)
            for (int j = 0; j < width; j++) acc[0][j] = _mm256_add_ps(acc[0][j], acc[u][j]);
        const __m256 vpost = _mm256_set1_ps(post);
        for (int j = 0; j < nv; j++)
            _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(acc[0][j], vpost));
        if (tail)
            _mm256_maskstore_ps(out + 8 * nv, m, _mm256_mul_ps(acc[0][nv], vpost));
    }

    /* All hd columns: 64-column chunks, then one chunk for the rest, dispatched to a
       fully unrolled instance of att_pv_chunk. */
    static void att_pv(const float* p, ptrdiff_t n, const float* v, int hd, float* out,
                       int fresh, float corr, float post) {
        const __m256i none = _mm256_setzero_si256();
        int d0 = 0;
        for (; hd - d0 >= 64; d0 += 64)
            att_pv_chunk(p, n, v + d0, hd, out + d0, 8, 0, none, fresh, corr, post);
        const int left = hd - d0, nv = left >> 3, rem = left & 7;
        const __m256i m = att_tail_mask(rem);
        const float* vv = v + d0;
        float* oo = out + d0;
    #define ATT_PV_CASE(NV, TAIL) \
        case 2 * NV + TAIL: att_pv_chunk(p, n, vv, hd, oo, NV, TAIL, m, fresh, corr, post); break;
        switch (nv * 2 + (rem > 0)) {
        ATT_PV_CASE(0, 1) ATT_PV_CASE(1, 0) ATT_PV_CASE(1, 1) ATT_PV_CASE(2, 0)
        ATT_PV_CASE(2, 1) ATT_PV_CASE(3, 0) ATT_PV_CASE(3, 1) ATT_PV_CASE(4, 0)
        ATT_PV_CASE(4, 1) ATT_PV_CASE(5, 0) ATT_PV_CASE(5, 1) ATT_PV_CASE(6, 0)
        ATT_PV_CASE(6, 1) ATT_PV_CASE(7, 0) ATT_PV_CASE(7, 1)
        default: break;  /* left == 0 */
        }
    #undef ATT_PV_CASE
    }

    /* Keys per block when several query heads share a KV head: K and V blocks of
       about 24 KiB together stay in L1 while every head of the group uses them. */
    static ptrdiff_t att_block_keys(int hd) {
        ptrdiff_t b = (3072 / hd) & ~(ptrdiff_t)7;
        return b < 16 ? 16 : (b > 512 ? 512 : b);
    }

    #define ATT_MAX_GROUP 16

    /* n_g query heads (q + g*hd -> out + g*hd) sharing one KV head, over n cached
       positions starting at k, v:  out_g = softmax(scale * q_g.K^T) V.
       Keys are taken in blocks, each block serving every head of the group while it
       is in L1 (the grouped-query saving), with the online-softmax update: a running
       max m and sum l per head, and out rescaled by exp(m_old - m_new) when the max
       grows. With one head the whole range is a single block, which is the plain
       two-pass softmax. s: one score row of at least min(n, block) floats. */
    static void att_attend_group(const float* q, const float* k, const float* v,
                                 ptrdiff_t n, int n_g, int hd, float scale, float* out,
                                 float* s) {
        float m[ATT_MAX_GROUP], l[ATT_MAX_GROUP];
        for (int g0 = 0; g0 < n_g; g0 += ATT_MAX_GROUP) {
            const int gn = n_g - g0 < ATT_MAX_GROUP ? n_g - g0 : ATT_MAX_GROUP;
            const ptrdiff_t block = gn == 1 ? n : att_block_keys(hd);
            for (ptrdiff_t b = 0; b < n; b += block) {
                const ptrdiff_t nb = n - b < block ? n - b : block;
                const int last = b + nb == n;
                for (int g = 0; g < gn; g++) {
                    const float* qg = q + (ptrdiff_t)(g0 + g) * hd;
                    float* og = out + (ptrdiff_t)(g0 + g) * hd;
                    const float mb = att_scores(qg, k + b * hd, nb, hd, scale, s);
                    float corr = 1.0f;
                    if (b == 0) {
                        m[g] = mb;
                        l[g] = 0.0f;
                    } else if (mb > m[g]) {
                        corr = expf(m[g] - mb);
                        m[g] = mb;
                        l[g] *= corr;
                    }
                    l[g] += att_exp_sum(s, nb, m[g]);
                    /* l >= 1: the running max contributed exp(0) */
                    att_pv(s, nb, v + b * hd, hd, og, b == 0, corr, last ? 1.0f / l[g] : 1.0f);
                }
            }
        }
    }
    """
    void att_attend_group(const float* q, const float* k, const float* v, Py_ssize_t n,
                          int n_g, int hd, float scale, float* out, float* s) noexcept nogil


# Scratch rows are padded to 16 floats (64 bytes) so that threads never share a
# cache line of their score rows.
cdef enum:
    _SCRATCH_ALIGN = 16

# RoPE computes cos/sin for this many frequency pairs at a time on the stack, then
# applies them to every head of the row (so any n_rot works without allocating).
cdef enum:
    _ROPE_CHUNK = 128


cdef Py_ssize_t attention_scratch_floats(Py_ssize_t capacity, int n_threads) noexcept nogil:
    cdef Py_ssize_t row = (capacity + _SCRATCH_ALIGN - 1) // _SCRATCH_ALIGN * _SCRATCH_ALIGN
    if row < _SCRATCH_ALIGN:
        row = _SCRATCH_ALIGN
    return row * (n_threads if n_threads > 1 else 1)


cdef inline void _attend_task(const float* q, Py_ssize_t ldq, const float* k, const float* v,
                              Py_ssize_t head_stride, Py_ssize_t pos0, int head_dim,
                              float scale, Py_ssize_t window, float* out, Py_ssize_t ldo,
                              float* row_scratch, Py_ssize_t i, int h0, int n_g,
                              int group) noexcept nogil:
    """Query row i, heads [h0, h0 + n_g) (all of KV head h0 // group): attend to
    slots [first, pos0 + i]."""
    cdef Py_ssize_t pos = pos0 + i
    cdef Py_ssize_t first = 0
    cdef Py_ssize_t kv_off = (h0 // group) * head_stride
    if window > 0 and pos - window + 1 > 0:
        first = pos - window + 1
    kv_off += first * head_dim
    att_attend_group(q + i * ldq + h0 * head_dim, k + kv_off, v + kv_off, pos - first + 1,
                     n_g, head_dim, scale, out + i * ldo + h0 * head_dim, row_scratch)


cdef void attention(const float* q, Py_ssize_t n_q, Py_ssize_t ldq,
                    const float* k, const float* v, Py_ssize_t head_stride, Py_ssize_t pos0,
                    int n_head, int n_kv_head, int head_dim, float scale, Py_ssize_t window,
                    float* out, Py_ssize_t ldo, float* scratch, int n_threads) noexcept nogil:
    # A task is one query row and a set of query heads sharing a KV head, so K and V
    # blocks are read once for the whole set. Tasks write disjoint slices of out.
    cdef int group = n_head // n_kv_head
    cdef int sub = group            # query heads per task
    cdef int subs_per_group
    cdef Py_ssize_t i, task, n_tasks, units
    # The longest score row is pos0 + n_q <= capacity, so per-thread rows this long
    # fit in attention_scratch_floats(capacity, n_threads).
    cdef Py_ssize_t row_floats = attention_scratch_floats(pos0 + n_q, 1)
    cdef int j, h0
    if n_q <= 0:
        return
    if n_threads <= 1:
        for i in range(n_q):
            for j in range(n_kv_head):
                _attend_task(q, ldq, k, v, head_stride, pos0, head_dim, scale, window,
                             out, ldo, scratch, i, j * group, group, group)
        return
    # Too few (row, KV head) units to keep every thread busy (decode with few KV
    # heads): split each group into smaller sets of query heads, trading K/V reuse
    # for parallelism.
    units = n_q * n_kv_head
    if units < n_threads:
        sub = <int>((group * units + n_threads - 1) // n_threads)
        if sub < 1:
            sub = 1
    subs_per_group = (group + sub - 1) // sub
    n_tasks = units * subs_per_group
    # Later rows see more keys (causal), so tasks differ in cost: schedule dynamically.
    for task in prange(n_tasks, schedule="dynamic", num_threads=n_threads):
        h0 = <int>((task // subs_per_group) % n_kv_head) * group \
            + <int>(task % subs_per_group) * sub
        _attend_task(q, ldq, k, v, head_stride, pos0, head_dim, scale, window,
                     out, ldo, scratch + threadid() * row_floats,
                     task // (subs_per_group * n_kv_head), h0,
                     min(sub, (h0 // group + 1) * group - h0), group)


cdef void rope(float* x, Py_ssize_t n_rows, Py_ssize_t ldx, int n_heads, int head_dim,
               int n_rot, double pos0, double pos_step, const float* inv_freq,
               bint neox) noexcept nogil:
    cdef float cs[_ROPE_CHUNK]
    cdef float sn[_ROPE_CHUNK]
    cdef int half = n_rot // 2
    cdef int j, j0, j1, hh
    cdef Py_ssize_t i
    cdef double pos, angle
    cdef float a, b, c, s
    cdef float* row
    cdef float* xh
    # With pos_step == 0 every row turns by the same angles: compute them once.
    cdef bint same_angles = pos_step == 0.0 and half <= _ROPE_CHUNK
    for i in range(n_rows):
        pos = pos0 + <double>i * pos_step
        row = x + i * ldx
        j0 = 0
        while j0 < half:
            j1 = j0 + _ROPE_CHUNK if j0 + _ROPE_CHUNK < half else half
            if not (same_angles and i > 0):
                # Angles in double: at position 10^4 a float32 product would already
                # be off by ~1e-3 radians.
                for j in range(j0, j1):
                    angle = pos * <double>inv_freq[j]
                    cs[j - j0] = <float>cos(angle)
                    sn[j - j0] = <float>sin(angle)
            for hh in range(n_heads):
                xh = row + hh * head_dim
                if neox:
                    for j in range(j0, j1):
                        a = xh[j]
                        b = xh[j + half]
                        c = cs[j - j0]
                        s = sn[j - j0]
                        xh[j] = a * c - b * s
                        xh[j + half] = a * s + b * c
                else:
                    for j in range(j0, j1):
                        a = xh[2 * j]
                        b = xh[2 * j + 1]
                        c = cs[j - j0]
                        s = sn[j - j0]
                        xh[2 * j] = a * c - b * s
                        xh[2 * j + 1] = a * s + b * c
            j0 = j1


# ----------------------------------------------------------------------------------
# Python wrappers
# ----------------------------------------------------------------------------------

cdef Py_ssize_t _row_stride(object arr, str name, Py_ssize_t n_cols, bint writable) except -1:
    """Row stride in floats of a 2-D float32 array with contiguous rows of n_cols."""
    if not isinstance(arr, np.ndarray):
        raise ShapeError(f"{name}: expected a numpy float32 array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray> arr
    if a.dtype != np.float32:
        raise ShapeError(f"{name}: expected float32, got {a.dtype}")
    if a.ndim != 2 or a.shape[1] != n_cols:
        raise ShapeError(f"{name}: expected shape (rows, {n_cols}), got {arr.shape}")
    if writable and not a.flags.writeable:
        raise ShapeError(f"{name}: array is read-only")
    if a.shape[0] <= 1:
        return n_cols
    if (n_cols > 1 and a.strides[1] != 4) or a.strides[0] % 4 != 0 or a.strides[0] < 4 * n_cols:
        raise ShapeError(f"{name}: rows must be contiguous float32 and not overlap "
                         f"(strides {arr.strides})")
    return a.strides[0] // 4


cdef Py_ssize_t _cache_head_stride(object arr, str name) except -1:
    """Head stride in floats of a (n_kv_head, capacity, head_dim) float32 cache."""
    if not isinstance(arr, np.ndarray):
        raise ShapeError(f"{name}: expected a numpy float32 array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray> arr
    if a.dtype != np.float32:
        raise ShapeError(f"{name}: expected float32, got {a.dtype}")
    if a.ndim != 3:
        raise ShapeError(f"{name}: expected shape (n_kv_head, capacity, head_dim), got {arr.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise ShapeError(f"{name}: empty cache, shape {arr.shape}")
    cdef Py_ssize_t hd = a.shape[2], cap = a.shape[1]
    if (hd > 1 and a.strides[2] != 4) or (cap > 1 and a.strides[1] != 4 * hd):
        raise ShapeError(f"{name}: each head's (capacity, head_dim) block must be C-contiguous "
                         f"(strides {arr.strides})")
    if a.shape[0] == 1:
        return cap * hd
    if a.strides[0] % 4 != 0 or a.strides[0] < 4 * cap * hd:
        raise ShapeError(f"{name}: heads must not overlap (strides {arr.strides})")
    return a.strides[0] // 4


cdef inline bint _overlaps(const float* a, Py_ssize_t a_len, const float* b,
                          Py_ssize_t b_len) noexcept:
    return a < b + b_len and b < a + a_len


def _py_attention(q, k_cache, v_cache, Py_ssize_t pos0, int n_head, int n_kv_head,
                  scale=None, Py_ssize_t window=0, out=None, int n_threads=1):
    """Causal (grouped-query) attention of q against a layer's KV cache.

    q: float32 (n_q, n_head * head_dim); query row i sits at position pos0 + i.
    k_cache, v_cache: float32 (n_kv_head, capacity, head_dim), slots [0, pos0 + n_q)
    filled. Query head h uses KV head h // (n_head // n_kv_head). Row i attends to
    slots [max(0, pos0 + i - window + 1), pos0 + i] (window <= 0: all of them).
    scale defaults to 1 / sqrt(head_dim). out (n_q, n_head * head_dim) float32 is
    written and returned (allocated if None; it must not overlap the inputs).
    n_threads > 1 splits the work over OpenMP threads.
    """
    if n_head <= 0 or n_kv_head <= 0:
        raise ShapeError(f"n_head and n_kv_head must be positive, got {n_head}, {n_kv_head}")
    if n_head % n_kv_head != 0:
        raise ShapeError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
    if pos0 < 0:
        raise ShapeError(f"pos0 must be >= 0, got {pos0}")
    cdef Py_ssize_t head_stride = _cache_head_stride(k_cache, "k_cache")
    if _cache_head_stride(v_cache, "v_cache") != head_stride or v_cache.shape != k_cache.shape:
        raise ShapeError(f"v_cache: expected the layout of k_cache {k_cache.shape} "
                         f"(strides {k_cache.strides}), got {v_cache.shape} "
                         f"(strides {v_cache.strides})")
    cdef Py_ssize_t n_kv = k_cache.shape[0], capacity = k_cache.shape[1]
    cdef int head_dim = k_cache.shape[2]
    if n_kv != n_kv_head:
        raise ShapeError(f"k_cache: has {n_kv} heads, n_kv_head is {n_kv_head}")
    cdef Py_ssize_t width = <Py_ssize_t>n_head * head_dim
    cdef Py_ssize_t ldq = _row_stride(q, "q", width, False)
    cdef Py_ssize_t n_q = q.shape[0]
    if pos0 + n_q > capacity:
        raise ShapeError(f"pos0 + n_q = {pos0} + {n_q} exceeds the cache capacity {capacity}")
    cdef float c_scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if out is None:
        out = np.empty((n_q, width), dtype=np.float32)
    cdef Py_ssize_t ldo = _row_stride(out, "out", width, True)
    if out.shape[0] != n_q:
        raise ShapeError(f"out: expected shape ({n_q}, {width}), got {out.shape}")
    cdef float* q_ptr = <float*> cnp.PyArray_DATA(q)
    cdef float* out_ptr = <float*> cnp.PyArray_DATA(out)
    cdef float* k_ptr = <float*> cnp.PyArray_DATA(k_cache)
    cdef float* v_ptr = <float*> cnp.PyArray_DATA(v_cache)
    cdef Py_ssize_t out_end = (n_q - 1) * ldo + width
    cdef Py_ssize_t cache_end = (n_kv - 1) * head_stride + capacity * head_dim
    if n_q > 0:
        # Address-range test (cheaper than np.may_share_memory, same conservative answer).
        # out may not even be q itself: a head's query is read again for every key
        # block after its first output block was written.
        if _overlaps(out_ptr, out_end, q_ptr, (n_q - 1) * ldq + width):
            raise ShapeError("out overlaps q")
        if _overlaps(out_ptr, out_end, k_ptr, cache_end) \
                or _overlaps(out_ptr, out_end, v_ptr, cache_end):
            raise ShapeError("out overlaps k_cache or v_cache")
    scratch = np.empty(attention_scratch_floats(capacity, n_threads), dtype=np.float32)
    cdef float* s_ptr = <float*> cnp.PyArray_DATA(scratch)
    with nogil:
        attention(q_ptr, n_q, ldq, k_ptr, v_ptr, head_stride, pos0, n_head, n_kv_head,
                  head_dim, c_scale, window, out_ptr, ldo, s_ptr, n_threads)
    return out


def _py_rope(x, double pos0, int n_heads, int head_dim, inv_freq, n_rot=None,
             bint neox=False, double pos_step=1.0):
    """Rotate x (n_rows, n_heads * head_dim) float32 in place; returns x.

    Row i sits at position pos0 + i * pos_step. The first n_rot (default head_dim,
    even) dims of each head turn by angle position * inv_freq[j] for pair j:
    pairs (2j, 2j + 1) when neox is False (GGUF "llama"), (j, j + n_rot/2) when True.
    """
    if n_heads <= 0 or head_dim <= 0:
        raise ShapeError(f"n_heads and head_dim must be positive, got {n_heads}, {head_dim}")
    cdef int c_rot = head_dim if n_rot is None else int(n_rot)
    if c_rot < 0 or c_rot > head_dim or c_rot % 2:
        raise ShapeError(f"n_rot must be even and in [0, head_dim={head_dim}], got {c_rot}")
    if not math.isfinite(pos0) or not math.isfinite(pos_step):
        raise ShapeError(f"pos0 and pos_step must be finite, got {pos0}, {pos_step}")
    cdef Py_ssize_t ldx = _row_stride(x, "x", <Py_ssize_t>n_heads * head_dim, True)
    if not isinstance(inv_freq, np.ndarray) or inv_freq.dtype != np.float32 \
            or inv_freq.ndim != 1 or not inv_freq.flags.c_contiguous \
            or inv_freq.shape[0] < c_rot // 2:
        raise ShapeError(f"inv_freq: expected a contiguous float32 vector of at least "
                         f"n_rot/2 = {c_rot // 2} values, got "
                         f"{getattr(inv_freq, 'dtype', type(inv_freq))} "
                         f"{getattr(inv_freq, 'shape', '')}")
    cdef float* x_ptr = <float*> cnp.PyArray_DATA(x)
    cdef const float* f_ptr = <const float*> cnp.PyArray_DATA(inv_freq)
    cdef Py_ssize_t n_rows = x.shape[0]
    with nogil:
        rope(x_ptr, n_rows, ldx, n_heads, head_dim, c_rot, pos0, pos_step, f_ptr, neox)
    return x


def rope_inv_freq(int n_rot, double theta, double scale=1.0):
    """inv_freq[j] = theta^(-2j / n_rot) / scale for the n_rot / 2 rotated pairs.

    ``scale`` is linear position scaling (positions divided by it). Computed in
    float64, returned as float32.
    """
    if n_rot <= 0 or n_rot % 2:
        raise ShapeError(f"n_rot must be a positive even number, got {n_rot}")
    if not (theta > 0.0) or not (scale > 0.0):
        raise ShapeError(f"theta and scale must be positive, got {theta}, {scale}")
    j = np.arange(n_rot // 2, dtype=np.float64)
    return (theta ** (-2.0 * j / n_rot) / scale).astype(np.float32)


def scratch_floats(Py_ssize_t capacity, int n_threads=1):
    """Floats of scratch ``attention`` needs for a cache of this capacity."""
    return attention_scratch_floats(capacity, n_threads)


# The nogil kernels above are named as in _attention.pxd (that is what other modules
# cimport); the Python functions get the same public names through the module dict.
_py_attention.__name__ = _py_attention.__qualname__ = "attention"
_py_rope.__name__ = _py_rope.__qualname__ = "rope"
globals()["attention"] = _py_attention
globals()["rope"] = _py_rope
