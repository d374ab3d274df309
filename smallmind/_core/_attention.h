/*
 * The SIMD inner loops of causal attention (see _attention.pyx for the driver that
 * walks query rows and heads, and splits them over threads).
 *
 * For one query row and the query heads that share a KV head, att_attend_group walks
 * the cached keys in blocks: one block of scores per head into a score row (dot products
 * against 8 keys at once), exponentiated against a running maximum (online softmax),
 * and the weighted V rows accumulated in registers. No T x T matrix ever exists, and
 * each K/V block is read once for all the heads of the group (grouped-query attention).
 * With one query head the block is the whole range: the plain max-subtracted softmax.
 */
#ifndef SMALLMIND_ATTENTION_H
#define SMALLMIND_ATTENTION_H

#include <math.h>
#include <stddef.h>

#include "_simd.h"

/* Forced, so that each instance gets constant column counts (see att_pv). */
#define ATT_INLINE static inline __attribute__((always_inline))

/* s[t] = scale * dot(q, k[t]) for n keys of hd floats (k rows contiguous);
   returns max_t s[t]. Eight keys per step share each load of q, and their
   eight reductions collapse into one vector store. */
static float att_scores(const float* q, const float* k, ptrdiff_t n, int hd,
                       float scale, float* s) {
    const int nfull = hd >> 3, rem = hd & 7;
    const __m256i m = sm_tail_mask(rem);
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
        const __m256 r = _mm256_mul_ps(sm_hsum8(a0, a1, a2, a3, a4, a5, a6, a7), vscale);
        _mm256_storeu_ps(s + t, r);
        vmax = _mm256_max_ps(vmax, r);
    }
    if (t > 0)
        mx = sm_hmax(vmax);
    for (; t < n; t++) {
        const float* kt = k + t * hd;
        __m256 a = _mm256_setzero_ps();
        int d = 0;
        for (int c = 0; c < nfull; c++, d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kt + d), a);
        if (rem)
            a = _mm256_fmadd_ps(_mm256_maskload_ps(q + d, m), _mm256_maskload_ps(kt + d, m), a);
        const float r = sm_hsum(a) * scale;
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
        const __m256 e = sm_exp(_mm256_sub_ps(_mm256_loadu_ps(s + t), vmx));
        _mm256_storeu_ps(s + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    if (t < n) {
        const __m256i m = sm_tail_mask(n - t);
        /* masked-off lanes load 0 and would add exp(-mx): zero them explicitly */
        __m256 e = sm_exp(_mm256_sub_ps(_mm256_maskload_ps(s + t, m), vmx));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
        _mm256_maskstore_ps(s + t, m, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    return sm_hsum(vsum);
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
    const __m256i m = sm_tail_mask(rem);
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
   grows. With one head per KV head (`grouped` 0) the whole range is a single block,
   which is the plain two-pass softmax. The blocks depend on the model's grouping, not on
   n_g, so a head's result is the same whichever subset of its group a thread takes.
   s: one score row of at least min(n, block) floats. */
static void att_attend_group(const float* q, const float* k, const float* v,
                             ptrdiff_t n, int n_g, int grouped, int hd, float scale, float* out,
                             float* s) {
    float m[ATT_MAX_GROUP], l[ATT_MAX_GROUP];
    for (int g0 = 0; g0 < n_g; g0 += ATT_MAX_GROUP) {
        const int gn = n_g - g0 < ATT_MAX_GROUP ? n_g - g0 : ATT_MAX_GROUP;
        const ptrdiff_t block = grouped ? att_block_keys(hd) : n;
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
                    corr = sm_exp_ss(m[g] - mb);
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

/* The next task of a job whose tasks threads claim one at a time. */
static inline ptrdiff_t att_next_task(ptrdiff_t* counter)
{
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

#endif /* SMALLMIND_ATTENTION_H */
