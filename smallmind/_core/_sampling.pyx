"""Token sampling kernels and ``SamplerCore``, the compiled half of ``smallmind.sampling.Sampler``.

One ``sample()`` call runs llama.cpp's sampler chain over a float32 logits row:
logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> one uniform draw.
Nothing is allocated per call: the Sampler owns every scratch buffer, sized once for its
vocabulary, and the random draw reads the numpy bit generator's C state directly.

Where the time goes, and how each stage avoids wasting it:

* unfiltered (temperature, maybe min-p): one AVX2 pass for the max (with the NaN check),
  one pass summing exp weights per block of 64 tokens (nothing vocabulary-sized is
  written), then the draw walks the block sums and recomputes one block's weights;
* top-k, small k: a size-k min-heap fed by an AVX2 filter that skips 8 logits at a time
  when none beats the heap's floor, so it costs little more than one pass;
* top-k, large k: vector counting passes find a floor that about k logits reach, only
  those are gathered, and an exact rank selection runs on them;
* top-p: no sort. Without top-k, the pass that computes the weights also measures the
  mass above a few weight floors, so only the tokens above the highest floor that
  already holds mass p are gathered; the kept set is then found by a histogram of mass
  over logit buckets (branch-free) followed by a weighted quickselect over the one
  bucket where the running mass crosses p.

The scalar and vector exp are the same polynomial (no libm in the hot loops), exactly
1 at the max and exactly 0 for a logit of -inf, so a banned token can never be drawn.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.math cimport INFINITY, ceil, logf
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cimport numpy as cnp

import numpy as np

from smallmind.errors import SamplingError, ShapeError, SmallMindError, TokenizerError

cnp.import_array()


cdef extern from "numpy/random/bitgen.h":
    ctypedef struct bitgen_t:
        void* state
        double (*next_double)(void* st) noexcept nogil


# AVX2 building blocks. They live in C because they are intrinsics; the algorithms that
# use them are the Cython functions below.
cdef extern from *:
    """
    #include <immintrin.h>
    #include <math.h>
    #include <float.h>

    /* exp(x) for x <= 0, 8 lanes. Cephes-style: 2^n * poly(r) with r = x - n ln2.
       Exactly 1 at 0, and exactly 0 below -87.33 (the float normal range), which
       covers -inf: a banned token gets weight 0, never a denormal. */
    static inline __m256 sm_exp_neg_ps(__m256 x) {
        const __m256 lowest = _mm256_set1_ps(-87.33654f);
        __m256 underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
        x = _mm256_max_ps(x, lowest);
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
        __m256i scale = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        p = _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
        return _mm256_andnot_ps(underflow, p);
    }

    /* The same function for one value. The hot loops never call libm's expf: the
       extension is not linked with -lm, so an unversioned expf binds to glibc's slow
       SVID-compatibility wrapper, and this keeps scalar and vector weights identical. */
    static inline float sm_exp_neg_ss(float x) {
        return _mm256_cvtss_f32(sm_exp_neg_ps(_mm256_set1_ps(x)));
    }

    static inline void sm_exp_neg_8(float* x) {
        _mm256_storeu_ps(x, sm_exp_neg_ps(_mm256_loadu_ps(x)));
    }

    static inline float sm_hsum_ps(__m256 v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }

    static inline float sm_hmax_ps(__m256 v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }

    /* Largest element, and whether any is NaN (checked in the same pass: an unordered
       self-compare is true only for NaN). Four accumulators hide the max latency. */
    static float sm_max_scan(const float* x, Py_ssize_t n, int* has_nan) {
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
        __m256 bad = _mm256_setzero_ps();
        Py_ssize_t i = 0;
        for (; i + 32 <= n; i += 32) {
            __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
            __m256 c = _mm256_loadu_ps(x + i + 16), d = _mm256_loadu_ps(x + i + 24);
            bad = _mm256_or_ps(bad, _mm256_or_ps(
                _mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q), _mm256_cmp_ps(b, b, _CMP_UNORD_Q)),
                _mm256_or_ps(_mm256_cmp_ps(c, c, _CMP_UNORD_Q), _mm256_cmp_ps(d, d, _CMP_UNORD_Q))));
            m0 = _mm256_max_ps(m0, a); m1 = _mm256_max_ps(m1, b);
            m2 = _mm256_max_ps(m2, c); m3 = _mm256_max_ps(m3, d);
        }
        for (; i + 8 <= n; i += 8) {
            __m256 a = _mm256_loadu_ps(x + i);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
            m0 = _mm256_max_ps(m0, a);
        }
        float best = sm_hmax_ps(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
        int nan = _mm256_movemask_ps(bad) != 0;
        for (; i < n; ++i) {
            float v = x[i];
            if (v != v) nan = 1;
            else if (v > best) best = v;
        }
        *has_nan = nan;
        return best;
    }

    /* Bit j set when x[j] > floor (j < 8). */
    static inline unsigned sm_gt_mask(const float* x, float floor) {
        return (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_set1_ps(floor), _CMP_GT_OQ));
    }
    static inline unsigned sm_ge_mask(const float* x, float floor) {
        return (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_set1_ps(floor), _CMP_GE_OQ));
    }
    static inline unsigned sm_eq_mask(const float* x, float value) {
        return (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_set1_ps(value), _CMP_EQ_OQ));
    }

    /* Weights of 8 logits: keep ? exp((x - x_max) * inv_temp) : 0. */
    static inline __m256 sm_weights8(__m256 v, __m256 vmax, __m256 vinv, __m256 vkeep) {
        __m256 e = sm_exp_neg_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmax), vinv));
        return _mm256_and_ps(e, _mm256_cmp_ps(v, vkeep, _CMP_GE_OQ));
    }

    /* Loads the ragged tail x[0:r] (r < 8), padded with -inf (weight 0). */
    static inline __m256 sm_load_tail(const float* x, Py_ssize_t r) {
        float pad[8];
        for (int j = 0; j < 8; ++j) pad[j] = j < r ? x[j] : -INFINITY;
        return _mm256_loadu_ps(pad);
    }
    static inline void sm_store_tail(float* w, __m256 v, Py_ssize_t r) {
        float pad[8];
        _mm256_storeu_ps(pad, v);
        for (Py_ssize_t j = 0; j < r; ++j) w[j] = pad[j];
    }

    #define SM_BLOCK 64

    /* Sum of the weights of x[0:n] (n <= SM_BLOCK), written to w when w is not NULL. */
    static inline float sm_block_weights(const float* x, float* w, Py_ssize_t n, __m256 vmax,
                                         __m256 vinv, __m256 vkeep) {
        __m256 acc = _mm256_setzero_ps();
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 e = sm_weights8(_mm256_loadu_ps(x + i), vmax, vinv, vkeep);
            if (w) _mm256_storeu_ps(w + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        if (i < n) {
            __m256 e = sm_weights8(sm_load_tail(x + i, n - i), vmax, vinv, vkeep);
            if (w) sm_store_tail(w + i, e, n - i);
            acc = _mm256_add_ps(acc, e);
        }
        return sm_hsum_ps(acc);
    }

    /* Only the block sums are stored: the draw recomputes the weights of the one block it
       lands in (sm_block_weights again, so bit-identical), which saves writing and
       re-reading a vocabulary-sized array. */
    static double sm_plain_weights(const float* x, float* block_sums, Py_ssize_t n,
                                   float x_max, float inv_temp, float keep_from) {
        const __m256 vmax = _mm256_set1_ps(x_max), vinv = _mm256_set1_ps(inv_temp);
        const __m256 vkeep = _mm256_set1_ps(keep_from);
        double total = 0.0;
        Py_ssize_t b = 0;
        for (Py_ssize_t start = 0; start < n; start += SM_BLOCK, ++b) {
            Py_ssize_t len = n - start < SM_BLOCK ? n - start : SM_BLOCK;
            float s = sm_block_weights(x + start, NULL, len, vmax, vinv, vkeep);
            block_sums[b] = s;
            total += s;
        }
        return total;
    }

    static void sm_weights_of_block(const float* x, float* w, Py_ssize_t n, float x_max,
                                    float inv_temp, float keep_from) {
        sm_block_weights(x, w, n, _mm256_set1_ps(x_max), _mm256_set1_ps(inv_temp),
                         _mm256_set1_ps(keep_from));
    }

    /* Weight floors for the top-p prefilter, highest first (about 1.4, 3.5, 6.2, 9.7,
       13.9 and 20.8 nats below the max). level_mass[j] gets the weight of every token
       at or above floor j, so the caller can gather only the tokens above the highest
       floor whose mass already reaches p. */
    #define SM_N_LEVELS 6
    static const float SM_LEVELS[SM_N_LEVELS] = {
        0x1p-2f, 0x1p-5f, 0x1p-9f, 0x1p-14f, 0x1p-20f, 0x1p-30f};

    static double sm_level_weights(const float* x, float* w, Py_ssize_t n, float x_max,
                                   double* level_mass) {
        const __m256 vmax = _mm256_set1_ps(x_max), one = _mm256_set1_ps(1.0f);
        const __m256 vkeep = _mm256_set1_ps(-INFINITY);
        __m256 floors[SM_N_LEVELS];
        double total = 0.0;
        for (int j = 0; j < SM_N_LEVELS; ++j) {
            floors[j] = _mm256_set1_ps(SM_LEVELS[j]);
            level_mass[j] = 0.0;
        }
        /* float accumulators are flushed into doubles every block, so rounding does not
           grow with the vocabulary */
        for (Py_ssize_t start = 0; start < n; start += SM_BLOCK) {
            Py_ssize_t end = start + SM_BLOCK < n ? start + SM_BLOCK : n, i = start;
            __m256 acc = _mm256_setzero_ps(), lv[SM_N_LEVELS];
            for (int j = 0; j < SM_N_LEVELS; ++j) lv[j] = _mm256_setzero_ps();
            for (; i < end; i += 8) {
                Py_ssize_t r = end - i;
                __m256 v = r >= 8 ? _mm256_loadu_ps(x + i) : sm_load_tail(x + i, r);
                __m256 e = sm_weights8(v, vmax, one, vkeep);
                if (r >= 8) _mm256_storeu_ps(w + i, e); else sm_store_tail(w + i, e, r);
                acc = _mm256_add_ps(acc, e);
                for (int j = 0; j < SM_N_LEVELS; ++j)
                    lv[j] = _mm256_add_ps(lv[j], _mm256_and_ps(e, _mm256_cmp_ps(e, floors[j], _CMP_GE_OQ)));
            }
            total += sm_hsum_ps(acc);
            for (int j = 0; j < SM_N_LEVELS; ++j) level_mass[j] += sm_hsum_ps(lv[j]);
        }
        return total;
    }

    /* counts[j] = how many x >= floors[j], for SM_N_FLOORS floors at once (one pass). */
    #define SM_N_FLOORS 8
    static void sm_count_at_least(const float* x, Py_ssize_t n, const float* floors,
                                  Py_ssize_t* counts) {
        __m256 vf[SM_N_FLOORS];
        __m256i acc[SM_N_FLOORS];
        Py_ssize_t i = 0;
        for (int j = 0; j < SM_N_FLOORS; ++j) {
            vf[j] = _mm256_set1_ps(floors[j]);
            acc[j] = _mm256_setzero_si256();
            counts[j] = 0;
        }
        /* 32-bit lane counters cannot overflow: a vocabulary is < 2^31 tokens */
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            for (int j = 0; j < SM_N_FLOORS; ++j)  /* a true compare is -1: subtracting counts it */
                acc[j] = _mm256_sub_epi32(acc[j], _mm256_castps_si256(_mm256_cmp_ps(v, vf[j], _CMP_GE_OQ)));
        }
        for (int j = 0; j < SM_N_FLOORS; ++j) {
            int lanes[8];
            _mm256_storeu_si256((__m256i*)lanes, acc[j]);
            for (int l = 0; l < 8; ++l) counts[j] += lanes[l];
            for (Py_ssize_t t = i; t < n; ++t) counts[j] += x[t] >= floors[j];
        }
    }
    """
    float sm_max_scan(const float* x, Py_ssize_t n, int* has_nan) noexcept nogil
    void sm_count_at_least(const float* x, Py_ssize_t n, const float* floors,
                           Py_ssize_t* counts) noexcept nogil
    const int SM_N_FLOORS
    unsigned sm_gt_mask(const float* x, float floor) noexcept nogil
    unsigned sm_ge_mask(const float* x, float floor) noexcept nogil
    unsigned sm_eq_mask(const float* x, float value) noexcept nogil
    double sm_plain_weights(const float* x, float* block_sums, Py_ssize_t n,
                            float x_max, float inv_temp, float keep_from) noexcept nogil
    void sm_weights_of_block(const float* x, float* w, Py_ssize_t n, float x_max,
                             float inv_temp, float keep_from) noexcept nogil
    double sm_level_weights(const float* x, float* w, Py_ssize_t n, float x_max,
                            double* level_mass) noexcept nogil
    const int SM_N_LEVELS
    const float SM_LEVELS[]
    const float FLT_TRUE_MIN
    float sm_exp_neg_ss(float x) noexcept nogil
    void sm_exp_neg_8(float* x) noexcept nogil
    int __builtin_ctz(unsigned int x) noexcept nogil


# ---------------------------------------------------------------------------------------
# Scans


cdef float max_scan(const float* x, Py_ssize_t n, bint* has_nan) noexcept nogil:
    cdef int nan = 0
    cdef float best = sm_max_scan(x, n, &nan)
    has_nan[0] = nan != 0
    return best


cdef Py_ssize_t first_index_of(const float* x, Py_ssize_t n, float value) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef unsigned mask
    while i + 8 <= n:
        mask = sm_eq_mask(x + i, value)
        if mask:
            return i + __builtin_ctz(mask)
        i += 8
    while i < n:
        if x[i] == value:
            return i
        i += 1
    return n


# ---------------------------------------------------------------------------------------
# The unfiltered distribution


cdef double plain_weights(const float* x, float* block_sums, Py_ssize_t n,
                          float x_max, float inv_temp, float keep_from) noexcept nogil:
    return sm_plain_weights(x, block_sums, n, x_max, inv_temp, keep_from)


cdef Py_ssize_t pick_plain(const float* x, const float* block_sums, Py_ssize_t n,
                           float x_max, float inv_temp, float keep_from,
                           double target) noexcept nogil:
    cdef Py_ssize_t n_blocks = (n + SAMPLE_BLOCK - 1) // SAMPLE_BLOCK
    cdef Py_ssize_t b, i, start, length, chosen = 0, last = 0
    cdef double cum = 0.0
    cdef bint crossed = False
    cdef float w[SAMPLE_BLOCK]
    # Invariant cum <= target: a zero-weight block or token leaves cum unchanged, so it
    # can never be the first to cross the target.
    for b in range(n_blocks):
        if block_sums[b] > 0:
            chosen = b
            if cum + block_sums[b] > target:
                crossed = True
                break
            cum += block_sums[b]
    start = chosen * SAMPLE_BLOCK
    length = min(<Py_ssize_t>SAMPLE_BLOCK, n - start)
    sm_weights_of_block(x + start, w, length, x_max, inv_temp, keep_from)
    for i in range(length):
        if w[i] > 0:
            cum += w[i]
            last = i
            if crossed and cum > target:
                return start + i
    # The target fell in a rounding gap (float block sums vs this double running sum):
    # the last token with weight in the block.
    return start + last


# ---------------------------------------------------------------------------------------
# Filters over candidates


cdef enum:
    _TOP_K_HEAP_MAX = 128         # larger k gathers and rank-selects (top_k_select)
    _QUICKSELECT_MAX = 512        # larger candidate sets are bucketed first (_bucket_split)


cdef inline void _swap(Candidate* c, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Candidate t = c[a]
    c[a] = c[b]
    c[b] = t


cdef inline bint _heap_less(const Candidate* a, const Candidate* b) noexcept nogil:
    # Root = smallest logit; among equal logits the higher token id counts as smaller, so
    # it is evicted first and ties resolve toward lower ids, like greedy argmax.
    return a.logit < b.logit or (a.logit == b.logit and a.token > b.token)


cdef inline void _sift_down(Candidate* heap, Py_ssize_t k, Py_ssize_t i) noexcept nogil:
    cdef Candidate item = heap[i]
    cdef Py_ssize_t child
    while True:
        child = 2 * i + 1
        if child >= k:
            break
        if child + 1 < k and _heap_less(&heap[child + 1], &heap[child]):
            child += 1
        if not _heap_less(&heap[child], &item):
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


cdef inline void _heap_offer(Candidate* heap, Py_ssize_t k, const float* x, Py_ssize_t j) noexcept nogil:
    # Strictly greater: an equal logit arriving later has a higher id and loses the tie.
    if x[j] > heap[0].logit:
        heap[0].logit = x[j]
        heap[0].token = <int32_t>j
        _sift_down(heap, k, 0)


cdef float top_k_select(const float* x, Py_ssize_t n, Py_ssize_t k, float x_max,
                        Candidate* out, Candidate* side, double* hist) noexcept nogil:
    if k <= _TOP_K_HEAP_MAX:
        return _top_k_heap(x, n, k, out)
    return _top_k_gather(x, n, k, x_max, out, side, hist)


cdef float _top_k_heap(const float* x, Py_ssize_t n, Py_ssize_t k, Candidate* out) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned mask
    for i in range(k):
        out[i].logit = x[i]
        out[i].token = <int32_t>i
        out[i].weight = 0
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(out, k, i)
    i = k
    # Once the heap holds typical top-k values almost no logit beats its floor, so testing
    # 8 at a time against the floor skips nearly the whole vocabulary.
    while i + 8 <= n:
        mask = sm_gt_mask(x + i, out[0].logit)
        while mask:
            _heap_offer(out, k, x, i + __builtin_ctz(mask))  # rechecks: the floor may have risen
            mask &= mask - 1
        i += 8
    while i < n:
        _heap_offer(out, k, x, i)
        i += 1
    return out[0].logit  # the root is the smallest kept logit


cdef float _top_k_gather(const float* x, Py_ssize_t n, Py_ssize_t k, float x_max,
                         Candidate* out, Candidate* side, double* hist) noexcept nogil:
    # A heap costs O(k log k) sifts with unpredictable branches, too slow for k in the
    # hundreds or thousands. Instead: find a floor that about k logits reach by counting
    # (vector passes: 8 floors at distances 0.5..32 below the max, then 8 floors evenly
    # inside the bracket that holds the k-th logit), gather the logits at or above it,
    # and put the k best first with an exact selection over just those.
    cdef float floors[8]
    cdef Py_ssize_t counts[8]
    cdef Py_ssize_t i, j, m = 0, kept, n_side
    cdef float floor = -INFINITY, above = x_max, lowest
    cdef double need
    cdef unsigned mask
    for j in range(7):
        floors[j] = x_max - 0.5 * (1 << j)
    floors[7] = -INFINITY  # always reached by all n >= k logits
    sm_count_at_least(x, n, floors, counts)
    for j in range(8):
        if counts[j] >= k:
            floor = floors[j]
            if j > 0:
                above = floors[j - 1]
            break
    if floor != -INFINITY and counts[j] > 2 * k:
        # k-th logit lies in [floor, above): split that bracket 8 ways and count again
        for i in range(8):
            floors[i] = above - (above - floor) * (i + 1) / 8.0
        floors[7] = floor  # exact, whatever the rounding above
        sm_count_at_least(x, n, floors, counts)
        for i in range(8):
            if counts[i] >= k:
                floor = floors[i]
                break
    i = 0
    while i + 8 <= n:
        mask = sm_ge_mask(x + i, floor)
        while mask:
            j = i + __builtin_ctz(mask)
            out[m].logit = x[j]
            out[m].token = <int32_t>j
            out[m].weight = 0
            m += 1
            mask &= mask - 1
        i += 8
    while i < n:
        if x[i] >= floor:
            out[m].logit = x[i]
            out[m].token = <int32_t>i
            out[m].weight = 0
            m += 1
        i += 1
    if m > _QUICKSELECT_MAX and floor != -INFINITY and floor < x_max:
        need = <double>k
        kept = _bucket_split(out, m, x_max, floor, side, hist, False, &need, &n_side)
        _rank_select(side, n_side, k - kept)
        for i in range(k - kept):
            out[kept + i] = side[i]
    else:
        _rank_select(out, m, k)
    lowest = out[0].logit
    for i in range(1, k):
        lowest = min(lowest, out[i].logit)
    return lowest


cdef inline bint _ranks_before(const Candidate* a, const Candidate* b) noexcept nogil:
    # the total order of top-k: higher logit first, ties to the lower token id
    return a.logit > b.logit or (a.logit == b.logit and a.token < b.token)


cdef void _rank_select(Candidate* c, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # Hoare-style quickselect (nth_element): afterwards c[0:k] are the k first in
    # _ranks_before order, unordered among themselves.
    cdef Py_ssize_t lo = 0, hi = n, mid, store, i
    cdef Candidate pivot
    if k >= n:
        return
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        # median of three as pivot, moved to hi - 1
        if _ranks_before(&c[mid], &c[lo]):
            _swap(c, mid, lo)
        if _ranks_before(&c[hi - 1], &c[lo]):
            _swap(c, hi - 1, lo)
        if _ranks_before(&c[mid], &c[hi - 1]):
            _swap(c, mid, hi - 1)
        pivot = c[hi - 1]
        store = lo
        for i in range(lo, hi - 1):
            if _ranks_before(&c[i], &pivot):
                _swap(c, i, store)
                store += 1
        _swap(c, store, hi - 1)
        if store == k:
            return
        if store < k:
            lo = store + 1
        else:
            hi = store


cdef Py_ssize_t top_p_candidates(const float* x, Py_ssize_t n, float x_max, double p,
                                 float* w, Candidate* out, double* total,
                                 float* lowest) noexcept nogil:
    cdef double level_mass[16]
    cdef double need
    cdef float floor = FLT_TRUE_MIN  # default: every token with a positive weight
    cdef Py_ssize_t i, j, count = 0
    cdef unsigned mask
    total[0] = sm_level_weights(x, w, n, x_max, level_mass)
    # The tokens at or above a floor are a prefix of the descending order; if that prefix
    # already holds mass p, the top-p set lies inside it. The small margin keeps float
    # rounding in the level sums from choosing a floor that is just too high.
    need = p * total[0] * (1.0 + 1e-5)
    for j in range(SM_N_LEVELS):
        if level_mass[j] >= need:
            floor = SM_LEVELS[j]
            break
    lowest[0] = x_max + logf(floor)
    i = 0
    while i + 8 <= n:
        mask = sm_ge_mask(w + i, floor)
        if mask == 0xFF:  # dense stretches (flat distributions) copy without bit scans
            for j in range(i, i + 8):
                out[count].logit = x[j]
                out[count].weight = w[j]
                out[count].token = <int32_t>j
                count += 1
            i += 8
            continue
        while mask:
            j = i + __builtin_ctz(mask)
            out[count].logit = x[j]
            out[count].weight = w[j]
            out[count].token = <int32_t>j
            count += 1
            mask &= mask - 1
        i += 8
    while i < n:
        if w[i] >= floor:
            out[count].logit = x[i]
            out[count].weight = w[i]
            out[count].token = <int32_t>i
            count += 1
        i += 1
    return count


cdef inline float _median3(float a, float b, float c) noexcept nogil:
    if a > b:
        a, b = b, a
    if b > c:
        b = c
    return a if a > b else b


cdef Py_ssize_t _top_p_quickselect(Candidate* c, Py_ssize_t n, double need) noexcept nogil:
    # Quickselect on mass instead of rank: partition around a pivot weight into
    # (> pivot | == pivot | < pivot); if the heavier part alone reaches `need` the answer
    # lies inside it, otherwise it is all kept and the search continues below the pivot
    # for the mass still missing. c[0:lo] is always kept.
    cdef Py_ssize_t lo = 0, hi = n, lt, i, gt, n_eq, take
    cdef float pivot, w
    cdef double mass_gt
    while lo < hi:
        pivot = _median3(c[lo].weight, c[lo + (hi - lo) // 2].weight, c[hi - 1].weight)
        lt = lo
        i = lo
        gt = hi
        mass_gt = 0.0
        while i < gt:
            w = c[i].weight
            if w > pivot:
                mass_gt += w
                _swap(c, lt, i)
                lt += 1
                i += 1
            elif w < pivot:
                gt -= 1
                _swap(c, i, gt)
            else:
                i += 1
        if mass_gt >= need:
            hi = lt
            continue
        n_eq = gt - lt
        if mass_gt + n_eq * <double>pivot >= need:
            # keep just enough of the tied tokens (pivot > 0 here, or the sum could not grow)
            take = <Py_ssize_t>ceil((need - mass_gt) / pivot)
            if take < 1:
                take = 1
            elif take > n_eq:
                take = n_eq
            return lt + take
        need -= mass_gt + n_eq * <double>pivot
        lo = gt
    # Only reached when rounding left a sliver of `need` unmet: keep all that was kept.
    return lo if lo > 0 else 1


cdef Py_ssize_t top_p_select(Candidate* c, Py_ssize_t n, double need, float x_max,
                             float lowest, Candidate* side, double* bucket_mass) noexcept nogil:
    cdef Py_ssize_t i, kept, n_side, take
    if n <= _QUICKSELECT_MAX:
        return _top_p_quickselect(c, n, need)
    # weights below exp(-104) are 0 in float32, so a lower floor only wastes buckets
    lowest = max(lowest, x_max - 104.0)
    if not lowest < x_max:
        return _top_p_quickselect(c, n, need)
    kept = _bucket_split(c, n, x_max, lowest, side, bucket_mass, True, &need, &n_side)
    take = _top_p_quickselect(side, n_side, need) if n_side else 0
    for i in range(take):
        c[kept + i] = side[i]
    return max(kept + take, 1)


cdef Py_ssize_t _bucket_split(Candidate* c, Py_ssize_t n, float x_max, float lowest,
                              Candidate* side, double* hist, bint by_mass, double* need,
                              Py_ssize_t* n_side) noexcept nogil:
    # Quickselect's partitions branch unpredictably on every element, which is slow on the
    # thousands of candidates a flat distribution or a large k produces. This histogram
    # does the bulk of the work in two branch-free passes: logits fall into TOP_P_BUCKETS
    # equal buckets over [lowest, x_max] (logits below lowest join the last one); the
    # bucket where the running total (weights if by_mass, else counts) first reaches
    # *need is the crossing bucket. Candidates of earlier buckets move to the front of c
    # (their number is returned), the crossing bucket's to side[0:*n_side], and *need
    # drops by what the front holds, leaving an exact selection over side only.
    # Requires lowest < x_max, both finite.
    cdef Py_ssize_t i, b, crossing = TOP_P_BUCKETS, kept = 0, count = 0
    cdef float scale = (TOP_P_BUCKETS - 0.5) / (x_max - lowest)
    cdef double cum = 0.0
    for b in range(TOP_P_BUCKETS):
        hist[b] = 0.0
    if by_mass:
        for i in range(n):
            hist[_bucket_of(c[i].logit, x_max, scale)] += c[i].weight
    else:
        for i in range(n):
            hist[_bucket_of(c[i].logit, x_max, scale)] += 1.0
    for b in range(TOP_P_BUCKETS):
        if cum + hist[b] >= need[0]:
            crossing = b
            break
        cum += hist[b]
    if crossing == TOP_P_BUCKETS:  # rounding left `need` just out of reach: keep all
        n_side[0] = 0
        need[0] = 0.0
        return n
    for i in range(n):
        # Every candidate is written to both places and only the right counter advances,
        # so there is no branch to mispredict. kept <= i: c[kept] was already read.
        b = _bucket_of(c[i].logit, x_max, scale)
        side[count] = c[i]
        count += b == crossing
        c[kept] = c[i]
        kept += b < crossing
    n_side[0] = count
    need[0] -= cum
    return kept


cdef inline Py_ssize_t _bucket_of(float logit, float x_max, float scale) noexcept nogil:
    # Monotone in the logit: a higher logit never lands in a later bucket. -inf and very
    # low logits clamp into the last bucket (before the int conversion, which would be
    # undefined for inf).
    cdef float pos = (x_max - logit) * scale
    if not pos < <float>(TOP_P_BUCKETS - 1):  # also catches NaN (0 * inf on tiny ranges)
        return TOP_P_BUCKETS - 1
    return <Py_ssize_t>pos


cdef Py_ssize_t keep_at_least(Candidate* c, Py_ssize_t n, float keep_from) noexcept nogil:
    cdef Py_ssize_t i, kept = 0
    for i in range(n):
        if c[i].logit >= keep_from:
            c[kept] = c[i]
            kept += 1
    return kept


cdef double candidate_weights(Candidate* c, Py_ssize_t n, float x_max, float inv_temp) noexcept nogil:
    # Eight candidates at a time through the vector exp: the logits are strided (one per
    # 12-byte Candidate), so they are staged through a small buffer.
    cdef Py_ssize_t i = 0, j
    cdef double total = 0.0
    cdef float staged[8]
    while i + 8 <= n:
        for j in range(8):
            staged[j] = (c[i + j].logit - x_max) * inv_temp
        sm_exp_neg_8(staged)
        for j in range(8):
            c[i + j].weight = staged[j]
            total += staged[j]
        i += 8
    while i < n:
        c[i].weight = sm_exp_neg_ss((c[i].logit - x_max) * inv_temp)
        total += c[i].weight
        i += 1
    return total


cdef inline double _weight_sum(const Candidate* c, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double total = 0.0
    for i in range(n):
        total += c[i].weight
    return total


cdef Py_ssize_t pick_candidate(const Candidate* c, Py_ssize_t n, double target) noexcept nogil:
    cdef Py_ssize_t i, last = 0
    cdef double cum = 0.0
    for i in range(n):
        if c[i].weight > 0:
            cum += c[i].weight
            last = i
            if cum > target:
                return i
    return last


# ---------------------------------------------------------------------------------------
# Penalties


cdef Py_ssize_t apply_penalties(float* x, Py_ssize_t vocab, const token_t* hist, Py_ssize_t n,
                                int32_t* counts, float rep, float presence,
                                float frequency) noexcept nogil:
    cdef Py_ssize_t j, t
    cdef int32_t c
    cdef float v
    # Two passes over the window keep this O(n) with no O(vocab) clearing: count, then
    # penalise each distinct token once (at its first occurrence) and zero its count.
    for j in range(n):
        t = <Py_ssize_t>hist[j]
        if t < 0 or t >= vocab:
            for t in range(j):  # undo, so counts is all zero again for the next call
                counts[hist[t]] = 0
            return j
        counts[t] += 1
    for j in range(n):
        t = <Py_ssize_t>hist[j]
        c = counts[t]
        if c:
            v = x[t]
            v = v / rep if v > 0 else v * rep
            x[t] = v - (c * frequency + presence)
            counts[t] = 0
    return -1


# ---------------------------------------------------------------------------------------
# The sampler


cdef enum:
    _NAN_LOGITS = -1
    _ALL_BANNED = -2
    _RELEASE_GIL_FROM = 8192  # below this a call is too short to be worth dropping the GIL


cdef class SamplerCore:
    """Compiled state of a :class:`smallmind.sampling.Sampler`; use that class."""

    cdef readonly Py_ssize_t vocab_size
    cdef bint _configured
    cdef readonly object rng          # numpy Generator; its bit generator feeds the draws
    cdef object _bit_generator        # keeps `_bitgen` alive
    cdef bitgen_t* _bitgen
    cdef float _temperature
    cdef float _inv_temp
    cdef Py_ssize_t _top_k            # 0: off
    cdef double _top_p                # 1: off
    cdef float _log_min_p             # -inf: off
    cdef bint _penalize
    cdef float _rep
    cdef float _presence
    cdef float _frequency
    cdef Py_ssize_t _last_n           # -1: the whole history
    cdef Py_ssize_t _n_bias
    cdef int32_t* _bias_tokens
    cdef float* _bias_values
    cdef float* _work                 # logits after bias and penalties
    cdef float* _weights
    cdef float* _block_sums
    cdef Candidate* _cand
    cdef Candidate* _side             # the crossing bucket of _bucket_split
    cdef double* _bucket_mass
    cdef int32_t* _counts
    cdef int64_t* _hist
    cdef Py_ssize_t _hist_cap

    def __cinit__(self, *args, **kwargs):
        self._configured = False
        self._bitgen = NULL
        self._bias_tokens = NULL
        self._bias_values = NULL
        self._work = NULL
        self._weights = NULL
        self._block_sums = NULL
        self._cand = NULL
        self._side = NULL
        self._bucket_mass = NULL
        self._counts = NULL
        self._hist = NULL
        self._hist_cap = 0

    def __dealloc__(self):
        free(self._bias_tokens)
        free(self._bias_values)
        free(self._work)
        free(self._weights)
        free(self._block_sums)
        free(self._cand)
        free(self._side)
        free(self._bucket_mass)
        free(self._counts)
        free(self._hist)

    def _configure(self, Py_ssize_t vocab_size, double temperature, Py_ssize_t top_k,
                   double top_p, double min_p, double repetition_penalty,
                   double presence_penalty, double frequency_penalty, Py_ssize_t penalty_last_n,
                   const int32_t[::1] bias_tokens, const float[::1] bias_values, rng):
        """Set up once (called by Sampler.__init__ with validated values)."""
        if self._configured:
            raise RuntimeError("a Sampler is configured once")
        if vocab_size < 1 or vocab_size > 2**31 - 1:
            raise SamplingError(f"vocab_size must be in [1, 2**31 - 1], got {vocab_size}")
        self.vocab_size = vocab_size
        self._temperature = <float>temperature
        # 1/T is capped so a tiny temperature gives (x - max) * inv = 0 for the max, not
        # 0 * inf = NaN; the effect is greedy among the tied maxima, as intended.
        self._inv_temp = <float>min(1.0 / temperature, 1e30) if temperature > 0 else 0.0
        self._top_k = top_k if 0 < top_k < vocab_size else 0
        self._top_p = top_p if top_p < 1.0 else 1.0
        self._log_min_p = logf(<float>min_p) if min_p > 0 else -INFINITY
        self._rep = <float>repetition_penalty
        self._presence = <float>presence_penalty
        self._frequency = <float>frequency_penalty
        self._last_n = penalty_last_n
        self._penalize = penalty_last_n != 0 and (
            repetition_penalty != 1.0 or presence_penalty != 0.0 or frequency_penalty != 0.0)
        self._n_bias = bias_tokens.shape[0]
        if bias_values.shape[0] != self._n_bias:
            raise ShapeError("bias_tokens and bias_values differ in length")
        for i in range(self._n_bias):
            if bias_tokens[i] < 0 or bias_tokens[i] >= vocab_size:
                raise SamplingError(
                    f"logit_bias token id {bias_tokens[i]} is outside the vocabulary "
                    f"(vocab_size={vocab_size})")

        if self._n_bias or self._penalize:
            self._work = <float*>_alloc(vocab_size * sizeof(float))
        self._block_sums = <float*>_alloc(((vocab_size + SAMPLE_BLOCK - 1) // SAMPLE_BLOCK) * sizeof(float))
        if self._top_k or self._top_p < 1.0:
            self._cand = <Candidate*>_alloc(vocab_size * sizeof(Candidate))
        if self._top_p < 1.0 and not self._top_k:
            self._weights = <float*>_alloc(vocab_size * sizeof(float))
        if self._top_k > _TOP_K_HEAP_MAX or self._top_p < 1.0:
            self._side = <Candidate*>_alloc(vocab_size * sizeof(Candidate))
            self._bucket_mass = <double*>_alloc(TOP_P_BUCKETS * sizeof(double))
        if self._penalize:
            self._counts = <int32_t*>_alloc(vocab_size * sizeof(int32_t))
            for i in range(vocab_size):
                self._counts[i] = 0
        if self._n_bias:
            self._bias_tokens = <int32_t*>_alloc(self._n_bias * sizeof(int32_t))
            self._bias_values = <float*>_alloc(self._n_bias * sizeof(float))
            memcpy(self._bias_tokens, &bias_tokens[0], self._n_bias * sizeof(int32_t))
            memcpy(self._bias_values, &bias_values[0], self._n_bias * sizeof(float))

        bit_generator = rng.bit_generator
        self._bitgen = <bitgen_t*>PyCapsule_GetPointer(bit_generator.capsule, "BitGenerator")
        self._bit_generator = bit_generator
        self.rng = rng
        self._configured = True

    def sample(self, cnp.ndarray logits not None, history=None):
        """Draw one token id from ``logits`` (float32, shape ``(vocab_size,)``).

        ``history`` (a list or integer array of the token ids so far) feeds the
        repetition/presence/frequency penalties and is ignored when none is set.
        """
        cdef const float* src
        cdef Py_ssize_t token
        if not self._configured:
            raise RuntimeError("Sampler was not configured (call Sampler(params, vocab_size))")
        if (cnp.PyArray_TYPE(logits) != cnp.NPY_FLOAT32 or cnp.PyArray_NDIM(logits) != 1
                or cnp.PyArray_DIM(logits, 0) != self.vocab_size
                or not cnp.PyArray_IS_C_CONTIGUOUS(logits)
                or not cnp.PyArray_ISNOTSWAPPED(logits)):
            raise ShapeError(
                f"logits must be a contiguous native float32 array of shape "
                f"({self.vocab_size},), got dtype={logits.dtype} shape={(<object>logits).shape}"
                + ("" if logits.flags.c_contiguous else " (not contiguous)"))
        src = <const float*>cnp.PyArray_DATA(logits)
        if self._n_bias or (self._penalize and history is not None):
            memcpy(self._work, src, self.vocab_size * sizeof(float))
            for i in range(self._n_bias):
                self._work[self._bias_tokens[i]] += self._bias_values[i]
            if self._penalize and history is not None:
                self._apply_history(history)
            src = self._work
        if self.vocab_size >= _RELEASE_GIL_FROM:
            with nogil:
                token = self._choose(src)
        else:
            token = self._choose(src)
        if token < 0:
            self._raise_for(token, logits)
        return token

    cdef Py_ssize_t _choose(self, const float* x) noexcept nogil:
        cdef Py_ssize_t n = self.vocab_size, count, i
        cdef bint has_nan = False
        cdef float x_max = max_scan(x, n, &has_nan)
        cdef float lowest, keep_from
        cdef double total
        if has_nan:
            return _NAN_LOGITS
        if x_max == -INFINITY:
            return _ALL_BANNED
        if self._temperature == 0 or x_max == INFINITY:
            return first_index_of(x, n, x_max)  # greedy; no random number is drawn
        if self._top_k == 0 and self._top_p >= 1.0:
            keep_from = x_max + self._log_min_p
            total = plain_weights(x, self._block_sums, n, x_max, self._inv_temp, keep_from)
            return pick_plain(x, self._block_sums, n, x_max, self._inv_temp, keep_from,
                              self._uniform() * total)

        if self._top_k:
            lowest = top_k_select(x, n, self._top_k, x_max, self._cand, self._side,
                                  self._bucket_mass)
            count = self._top_k
            total = candidate_weights(self._cand, count, x_max, 1.0)
        else:
            count = top_p_candidates(x, n, x_max, self._top_p, self._weights, self._cand,
                                     &total, &lowest)
        if self._top_p < 1.0:
            count = top_p_select(self._cand, count, self._top_p * total, x_max, lowest,
                                 self._side, self._bucket_mass)
        if self._log_min_p != -INFINITY:
            # the max itself always passes (log(min_p) <= 0), so count stays >= 1
            count = keep_at_least(self._cand, count, x_max + self._log_min_p)
        if self._inv_temp != 1.0:
            total = candidate_weights(self._cand, count, x_max, self._inv_temp)
        else:
            total = _weight_sum(self._cand, count)
        i = pick_candidate(self._cand, count, self._uniform() * total)
        return self._cand[i].token

    cdef inline double _uniform(self) noexcept nogil:
        return self._bitgen.next_double(self._bitgen.state)

    cdef int _apply_history(self, history) except -1:
        cdef cnp.ndarray arr
        cdef list items
        cdef Py_ssize_t n, start, bad, j, shift = 0
        cdef int64_t* grown
        if isinstance(history, np.ndarray):
            arr = history
            if arr.ndim != 1:
                raise ShapeError(f"history must be 1-D, got shape {(<object>arr).shape}")
            n = arr.shape[0]
            start = self._window_start(n)
            if (cnp.PyArray_TYPE(arr) not in (cnp.NPY_INT32, cnp.NPY_INT64)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISNOTSWAPPED(arr)):
                if arr.dtype.kind not in "iu":
                    raise TypeError(f"history must hold integer token ids, got dtype {arr.dtype}")
                arr = np.ascontiguousarray(arr[start:], dtype=np.int64)  # just the window
                shift = start
                start = 0
                n = arr.shape[0]
            if cnp.PyArray_TYPE(arr) == cnp.NPY_INT32:
                bad = apply_penalties(self._work, self.vocab_size,
                                      (<const int32_t*>cnp.PyArray_DATA(arr)) + start, n - start,
                                      self._counts, self._rep, self._presence, self._frequency)
            else:
                bad = apply_penalties(self._work, self.vocab_size,
                                      (<const int64_t*>cnp.PyArray_DATA(arr)) + start, n - start,
                                      self._counts, self._rep, self._presence, self._frequency)
            if bad >= 0:
                raise TokenizerError(
                    f"history[{shift + start + bad}] = {history[shift + start + bad]} is not "
                    f"a token id (vocab_size={self.vocab_size})")
            return 0
        items = history if type(history) is list else list(history)
        n = len(items)
        start = self._window_start(n)
        if n - start > self._hist_cap:
            j = max(n - start, 2 * self._hist_cap, 64)
            grown = <int64_t*>realloc(self._hist, j * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError(f"cannot allocate a history window of {j} tokens")
            self._hist = grown
            self._hist_cap = j
        for j in range(start, n):
            self._hist[j - start] = items[j]
        bad = apply_penalties(self._work, self.vocab_size, <const int64_t*>self._hist, n - start,
                              self._counts, self._rep, self._presence, self._frequency)
        if bad >= 0:
            raise TokenizerError(
                f"history[{start + bad}] = {items[start + bad]} is not a token id "
                f"(vocab_size={self.vocab_size})")
        return 0

    cdef inline Py_ssize_t _window_start(self, Py_ssize_t n):
        return 0 if self._last_n < 0 or n <= self._last_n else n - self._last_n

    cdef _raise_for(self, Py_ssize_t code, cnp.ndarray logits):
        if code == _NAN_LOGITS:
            nan_at = np.flatnonzero(np.isnan(logits))
            if nan_at.size:
                raise SamplingError(
                    f"logits contain NaN ({nan_at.size} of {logits.shape[0]}, first at index "
                    f"{nan_at[0]}): the model produced invalid values")
            raise SamplingError("logit_bias or penalties turned an infinite logit into NaN")
        raise SamplingError("every token has a logit of -inf (all banned): nothing to sample")


cdef void* _alloc(size_t nbytes) except NULL:
    cdef void* p = malloc(nbytes if nbytes else 1)
    if p == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes of sampler scratch")
    return p

