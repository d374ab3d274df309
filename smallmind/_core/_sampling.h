/*
 * The AVX2 loops of token sampling: scans of the logits (max with a NaN check, compare
 * masks, counts above floors) and the weights exp((x - x_max) / T) summed per block.
 * The algorithms that use them are Cython: selection (top-k, top-p, min-p, argmax) in
 * _select.pyx, the sampler core in _sampling.pyx.
 *
 * Weights come from sm_exp (_simd.h), which is exactly 1 at the max and exactly 0 for a
 * logit of -inf, so a banned token can never be drawn; scalar code calls sm_exp_ss, the
 * same function, so scalar and vector weights are identical.
 */
#ifndef SMALLMIND_SAMPLING_H
#define SMALLMIND_SAMPLING_H

#include <float.h>
#include <math.h>
#include <stddef.h>

#include "_simd.h"

/* Largest element, and whether any is NaN (checked in the same pass: an unordered
   self-compare is true only for NaN). Four accumulators hide the max latency. */
static float sm_max_scan(const float* x, ptrdiff_t n, int* has_nan) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    __m256 bad = _mm256_setzero_ps();
    ptrdiff_t i = 0;
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
    float best = sm_hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
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
    __m256 e = sm_exp(_mm256_mul_ps(_mm256_sub_ps(v, vmax), vinv));
    return _mm256_and_ps(e, _mm256_cmp_ps(v, vkeep, _CMP_GE_OQ));
}

/* Loads the ragged tail x[0:r] (r < 8), padded with -inf (weight 0). */
static inline __m256 sm_load_tail(const float* x, ptrdiff_t r) {
    float pad[8];
    for (int j = 0; j < 8; ++j) pad[j] = j < r ? x[j] : -INFINITY;
    return _mm256_loadu_ps(pad);
}
static inline void sm_store_tail(float* w, __m256 v, ptrdiff_t r) {
    float pad[8];
    _mm256_storeu_ps(pad, v);
    for (ptrdiff_t j = 0; j < r; ++j) w[j] = pad[j];
}

#define SM_SAMPLE_BLOCK 64

/* Sum of the weights of x[0:n] (n <= SM_SAMPLE_BLOCK), written to w when w is not NULL. */
static inline float sm_block_weights(const float* x, float* w, ptrdiff_t n, __m256 vmax,
                                     __m256 vinv, __m256 vkeep) {
    __m256 acc = _mm256_setzero_ps();
    ptrdiff_t i = 0;
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
    return sm_hsum(acc);
}

/* Only the block sums are stored: the draw recomputes the weights of the one block it
   lands in (sm_block_weights again, so bit-identical), which saves writing and
   re-reading a vocabulary-sized array. */
static double sm_plain_weights(const float* x, float* block_sums, ptrdiff_t n,
                               float x_max, float inv_temp, float keep_from) {
    const __m256 vmax = _mm256_set1_ps(x_max), vinv = _mm256_set1_ps(inv_temp);
    const __m256 vkeep = _mm256_set1_ps(keep_from);
    double total = 0.0;
    ptrdiff_t b = 0;
    for (ptrdiff_t start = 0; start < n; start += SM_SAMPLE_BLOCK, ++b) {
        ptrdiff_t len = n - start < SM_SAMPLE_BLOCK ? n - start : SM_SAMPLE_BLOCK;
        float s = sm_block_weights(x + start, NULL, len, vmax, vinv, vkeep);
        block_sums[b] = s;
        total += s;
    }
    return total;
}

static void sm_weights_of_block(const float* x, float* w, ptrdiff_t n, float x_max,
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

static double sm_level_weights(const float* x, float* w, ptrdiff_t n, float x_max,
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
    for (ptrdiff_t start = 0; start < n; start += SM_SAMPLE_BLOCK) {
        ptrdiff_t end = start + SM_SAMPLE_BLOCK < n ? start + SM_SAMPLE_BLOCK : n, i = start;
        __m256 acc = _mm256_setzero_ps(), lv[SM_N_LEVELS];
        for (int j = 0; j < SM_N_LEVELS; ++j) lv[j] = _mm256_setzero_ps();
        for (; i < end; i += 8) {
            ptrdiff_t r = end - i;
            __m256 v = r >= 8 ? _mm256_loadu_ps(x + i) : sm_load_tail(x + i, r);
            __m256 e = sm_weights8(v, vmax, one, vkeep);
            if (r >= 8) _mm256_storeu_ps(w + i, e); else sm_store_tail(w + i, e, r);
            acc = _mm256_add_ps(acc, e);
            for (int j = 0; j < SM_N_LEVELS; ++j)
                lv[j] = _mm256_add_ps(lv[j], _mm256_and_ps(e, _mm256_cmp_ps(e, floors[j], _CMP_GE_OQ)));
        }
        total += sm_hsum(acc);
        for (int j = 0; j < SM_N_LEVELS; ++j) level_mass[j] += sm_hsum(lv[j]);
    }
    return total;
}

/* counts[j] = how many x >= floors[j], for SM_N_FLOORS floors at once (one pass). */
#define SM_N_FLOORS 8
static void sm_count_at_least(const float* x, ptrdiff_t n, const float* floors,
                              ptrdiff_t* counts) {
    __m256 vf[SM_N_FLOORS];
    __m256i acc[SM_N_FLOORS];
    ptrdiff_t i = 0;
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
        for (ptrdiff_t t = i; t < n; ++t) counts[j] += x[t] >= floors[j];
    }
}

#endif /* SMALLMIND_SAMPLING_H */
