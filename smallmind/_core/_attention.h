/*
 * The SIMD inner loops of causal attention (see _attention.pyx for the driver that
 * cuts the rows and heads into tiles and splits them over threads).
 *
 * att_tile takes a tile of query rows and the query heads that share a KV head, and
 * walks the cached keys in blocks: per query vector one block of scores (dot products
 * against 8 keys at once), exponentiated against a running maximum (online softmax),
 * and the weighted V rows accumulated in registers. No T x T matrix ever exists, and
 * each K/V block is read once for every vector of the tile.
 */
#ifndef SMALLMIND_ATTENTION_H
#define SMALLMIND_ATTENTION_H

#include <math.h>
#include <stddef.h>

#include "_simd.h"

/* Forced, so that each instance gets constant column counts (see att_pv). */
#define ATT_INLINE static inline __attribute__((always_inline))

/* A value loaded once into a register: without it the compiler folds the load into both
   FMAs that use it as a memory operand, loading it twice (the loads are the bottleneck). */
#define ATT_IN_REGISTER(x) __asm__("" : "+x"(x))

/* Query vectors (rows x heads) per tile, and the most keys per block: one block of scores
   per vector of a tile lives on the stack (16 KiB). */
#define ATT_TILE 32
#define ATT_BLOCK_MAX 128

/* The lane sum of one vector by the tree sm_hsum8 uses for each of its eight, so a score
   is the same bits whether its key was reduced alone or with seven others. */
static inline float att_hsum_tree(__m256 a) {
    __m256 h = _mm256_hadd_ps(a, a);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* s[t] = scale * dot(q, k[t]) for n keys of hd floats (k rows contiguous).
   Eight keys per step share each load of q, and their eight reductions collapse
   into one vector store. */
static void att_scores(const float* q, const float* k, ptrdiff_t n, int hd,
                       float scale, float* s) {
    const int nfull = hd >> 3, rem = hd & 7;
    const __m256i m = sm_tail_mask(rem);
    const __m256 vscale = _mm256_set1_ps(scale);
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
    }
    for (; t < n; t++) {
        const float* kt = k + t * hd;
        __m256 a = _mm256_setzero_ps();
        int d = 0;
        for (int c = 0; c < nfull; c++, d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kt + d), a);
        if (rem)
            a = _mm256_fmadd_ps(_mm256_maskload_ps(q + d, m), _mm256_maskload_ps(kt + d, m), a);
        s[t] = att_hsum_tree(a) * scale;
    }
}

/* att_scores for MR queries at once (q[h]; their scores rows ATT_BLOCK_MAX floats apart), NR keys per step: each load of a key serves every
   query and each load of a query NR keys. A score is the same bits as att_scores gives
   (one FMA chain per key over d, reduced by the same tree). NR = 4, MR <= 3. */
ATT_INLINE void att_scores_mr(const float* const* q, const int MR, const float* k,
                              ptrdiff_t n, int hd, float scale, float* s) {
    const int nfull = hd >> 3, rem = hd & 7;
    const __m256i m = sm_tail_mask(rem);
    const __m256 vscale = _mm256_set1_ps(scale);
    const int NR = 4;
    ptrdiff_t t = 0;
    for (; t + NR <= n; t += NR) {
        const float* k0 = k + t * hd;
        __m256 acc[12], x[3];
        for (int i = 0; i < MR * NR; i++) acc[i] = _mm256_setzero_ps();
#define ATT_SCORES_STEP(LOAD)                                                              \
        do {                                                                               \
            for (int h = 0; h < MR; h++) {                                                 \
                x[h] = LOAD(q[h] + d);                                                     \
                ATT_IN_REGISTER(x[h]);                                                     \
            }                                                                              \
            for (int j = 0; j < NR; j++) {                                                 \
                __m256 kk = LOAD(k0 + j * hd + d);                                         \
                ATT_IN_REGISTER(kk);                                                       \
                for (int h = 0; h < MR; h++)                                               \
                    acc[h * NR + j] = _mm256_fmadd_ps(x[h], kk, acc[h * NR + j]);          \
            }                                                                              \
        } while (0)
#define ATT_MASKLOAD(P) _mm256_maskload_ps(P, m)
        int d = 0;
        for (int c = 0; c < nfull; c++, d += 8) ATT_SCORES_STEP(_mm256_loadu_ps);
        if (rem) ATT_SCORES_STEP(ATT_MASKLOAD);
#undef ATT_SCORES_STEP
#undef ATT_MASKLOAD
        /* each reduction of 8 accumulators gives two heads' 4 scores */
        for (int h = 0; h < MR; h += 2) {
            const int h1 = h + 1 < MR ? h + 1 : h;
            const __m256 r = _mm256_mul_ps(sm_hsum8(acc[h * 4], acc[h * 4 + 1], acc[h * 4 + 2], acc[h * 4 + 3],
                                                    acc[h1 * 4], acc[h1 * 4 + 1], acc[h1 * 4 + 2],
                                                    acc[h1 * 4 + 3]),
                                           vscale);
            _mm_storeu_ps(s + h * ATT_BLOCK_MAX + t, _mm256_castps256_ps128(r));
            if (h + 1 < MR) _mm_storeu_ps(s + h1 * ATT_BLOCK_MAX + t, _mm256_extractf128_ps(r, 1));
        }
    }
    for (int h = 0; h < MR; h++)
        att_scores(q[h], k + t * hd, n - t, hd, scale, s + h * ATT_BLOCK_MAX + t);
}

/* One chunk of at most 72 output columns of
       out = post * (prev + sum_t p[t] * v[t])   with prev = fresh ? 0 : corr * out,
   the update of the online softmax, over the n keys from absolute position t_abs on.
   Always inlined with constant nv / tail, so the accumulators are registers and the
   column loops unroll completely. A narrow chunk (hd <= 32) would leave too few
   independent FMA chains to hide their latency, so it keeps U sets of accumulators, key
   t_abs + t in set (t_abs + t) % U: fixed by the key's position, not by the range. */
ATT_INLINE void att_pv_chunk(const float* p, ptrdiff_t n, ptrdiff_t t_abs, const float* v, int ldv,
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
#define ATT_PV_KEY(U_, T_)                                                                         \
    do {                                                                                           \
        const __m256 pt = _mm256_broadcast_ss(p + (T_));                                           \
        const float* vt = v + (T_) * ldv;                                                          \
        for (int j = 0; j < nv; j++)                                                               \
            acc[U_][j] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * j), acc[U_][j]);            \
        if (tail)                                                                                  \
            acc[U_][nv] = _mm256_fmadd_ps(pt, _mm256_maskload_ps(vt + 8 * nv, m), acc[U_][nv]);   \
    } while (0)
    const ptrdiff_t lead = (U - t_abs % U) % U;  /* keys before the first multiple of U */
    for (int u = 0; u < U; u++) {
        const ptrdiff_t t = (u - t_abs % U + U) % U;
        if (t < lead && t < n) ATT_PV_KEY(u, t);
    }
    ptrdiff_t t = lead < n ? lead : n;
    for (; t + U <= n; t += U)
        for (int u = 0; u < U; u++) ATT_PV_KEY(u, t + u);
    for (int u = 0; u < U; u++)
        if (t + u < n) ATT_PV_KEY(u, t + u);
#undef ATT_PV_KEY
    for (int u = 1; u < U; u++)
        for (int j = 0; j < width; j++) acc[0][j] = _mm256_add_ps(acc[0][j], acc[u][j]);
    const __m256 vpost = _mm256_set1_ps(post);
    for (int j = 0; j < nv; j++)
        _mm256_storeu_ps(out + 8 * j, _mm256_mul_ps(acc[0][j], vpost));
    if (tail)
        _mm256_maskstore_ps(out + 8 * nv, m, _mm256_mul_ps(acc[0][nv], vpost));
}

/* Columns [d0, hd) (d0 a multiple of 64): 64-column chunks, then one chunk for the
   rest, dispatched to a fully unrolled instance of att_pv_chunk. */
static void att_pv(const float* p, ptrdiff_t n, ptrdiff_t t_abs, const float* v, int hd, int d0,
                   float* out, int fresh, float corr, float post) {
    const __m256i none = _mm256_setzero_si256();
    for (; hd - d0 >= 64; d0 += 64)
        att_pv_chunk(p, n, t_abs, v + d0, hd, out + d0, 8, 0, none, fresh, corr, post);
    const int left = hd - d0, nv = left >> 3, rem = left & 7;
    const __m256i m = sm_tail_mask(rem);
    const float* vv = v + d0;
    float* oo = out + d0;
#define ATT_PV_CASE(NV, TAIL) \
    case 2 * NV + TAIL: att_pv_chunk(p, n, t_abs, vv, hd, oo, NV, TAIL, m, fresh, corr, post); break;
    switch (nv * 2 + (rem > 0)) {
    ATT_PV_CASE(0, 1) ATT_PV_CASE(1, 0) ATT_PV_CASE(1, 1) ATT_PV_CASE(2, 0)
    ATT_PV_CASE(2, 1) ATT_PV_CASE(3, 0) ATT_PV_CASE(3, 1) ATT_PV_CASE(4, 0)
    ATT_PV_CASE(4, 1) ATT_PV_CASE(5, 0) ATT_PV_CASE(5, 1) ATT_PV_CASE(6, 0)
    ATT_PV_CASE(6, 1) ATT_PV_CASE(7, 0) ATT_PV_CASE(7, 1)
    default: break;  /* left == 0 */
    }
#undef ATT_PV_CASE
}

/* att_pv for MR query vectors over the same keys (p rows ATT_BLOCK_MAX floats apart,
   outputs out[h]): each load of a V row serves them all, 32 columns at a
   time through the 64-column chunks (where att_pv_chunk keeps one accumulator per column,
   so the bits are the same), the rest through att_pv for each. MR <= 3. */
ATT_INLINE void att_pv_mr(const float* p, const int MR, ptrdiff_t n, ptrdiff_t t_abs, const float* v,
                          int hd, float* const* out, int fresh, const float* corr, const float* post) {
    const int wide = hd & ~63;
    for (int d0 = 0; d0 < wide; d0 += 32) {
        __m256 acc[3][4];
        for (int h = 0; h < MR; h++)
            for (int j = 0; j < 4; j++)
                acc[h][j] = fresh ? _mm256_setzero_ps()
                                  : _mm256_mul_ps(_mm256_loadu_ps(out[h] + d0 + 8 * j),
                                                  _mm256_set1_ps(corr[h]));
        const float* vt = v + d0;
        for (ptrdiff_t t = 0; t < n; t++, vt += hd) {
            __m256 x[3];
            for (int h = 0; h < MR; h++) x[h] = _mm256_broadcast_ss(p + h * ATT_BLOCK_MAX + t);
            for (int j = 0; j < 4; j++) {
                __m256 vv = _mm256_loadu_ps(vt + 8 * j);
                ATT_IN_REGISTER(vv);
                for (int h = 0; h < MR; h++) acc[h][j] = _mm256_fmadd_ps(x[h], vv, acc[h][j]);
            }
        }
        for (int h = 0; h < MR; h++)
            for (int j = 0; j < 4; j++)
                _mm256_storeu_ps(out[h] + d0 + 8 * j, _mm256_mul_ps(acc[h][j], _mm256_set1_ps(post[h])));
    }
    for (int h = 0; h < MR; h++)
        att_pv(p + h * ATT_BLOCK_MAX, n, t_abs, v, hd, wide, out[h], fresh, corr[h], post[h]);
}

/* Keys per block: K rows of about 32 KiB (8192 floats), so that a block of K, then one of
   V, stays in L1 while every query vector of a tile uses it (measured on Zen 3: 128 keys
   for head_dim 64 beat 48 by ~8%, 32 keys for 256 equal 16, 64 lose 15%). A multiple of
   8, so blocks start on 8-key boundaries; it depends on hd alone, so that a row's bits do too. */
static ptrdiff_t att_block_keys(int hd) {
    ptrdiff_t b = (8192 / hd) & ~(ptrdiff_t)7;
    return b < 16 ? 16 : (b > ATT_BLOCK_MAX ? ATT_BLOCK_MAX : b);
}

/* The first key a query at position p sees. */
static inline ptrdiff_t att_first(ptrdiff_t p, ptrdiff_t window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* All ones in the lanes of s[i, i + 8) that lie in [lo, hi): the lanes outside the range
   of an edge vector may hold anything. */
static inline __m256 att_lanes_in(ptrdiff_t i, ptrdiff_t lo, ptrdiff_t hi) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)(lo - i - 1))),
        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(hi - i)), lane)));
}

/* max of s[lo, hi). */
static float att_range_max(const float* s, ptrdiff_t lo, ptrdiff_t hi) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 vmax = ninf;
    for (ptrdiff_t i = lo & ~(ptrdiff_t)7; i < hi; i += 8) {
        __m256 x = _mm256_loadu_ps(s + i);
        if (i < lo || i + 8 > hi) x = _mm256_blendv_ps(ninf, x, att_lanes_in(i, lo, hi));
        vmax = _mm256_max_ps(vmax, x);
    }
    return sm_hmax(vmax);
}

/* s[t] = exp(s[t] - mx) for t in [lo, hi); returns their sum. Lane t % 8 sums key t
   (s[0] is a key at a multiple of 8), so the sum is the same wherever the range starts. */
static float att_exp_sum(float* s, ptrdiff_t lo, ptrdiff_t hi, float mx) {
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (ptrdiff_t i = lo & ~(ptrdiff_t)7; i < hi; i += 8) {
        __m256 e = sm_exp(_mm256_sub_ps(_mm256_loadu_ps(s + i), vmx));
        if (i < lo || i + 8 > hi) e = _mm256_and_ps(e, att_lanes_in(i, lo, hi));
        _mm256_storeu_ps(s + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    return sm_hsum(vsum);
}

/* One tile: n_rows consecutive query rows (row r at position pos + r, q + r * ldq, out +
   r * ldo) and n_g query heads of each (hd floats apart), all sharing one KV head (k, v:
   its slot 0). Row r sees the keys [att_first(pos + r, window), pos + r].
       out = softmax(scale * q.K^T) V   per (row, head): a query vector.
   Keys go in blocks of att_block_keys(hd) starting at multiples of it. A block's scores
   are computed for every vector of the tile while its K rows are in L1, then each
   vector's online-softmax update (a running max m and sum l, out rescaled by
   exp(m_old - m_new) when the max grows) and its P.V while the V rows are. Every step of
   a vector's arithmetic depends only on its own query, position and keys (blocks, 8-key
   lanes and P.V accumulators are fixed by absolute key positions; vectors run through
   the kernels in threes, twos or alone compute the same bits), never on the tile it is in: a row gives the same bits alone
   (decode), in any chunk of a prompt, or in any thread's share. n_rows <= ATT_TILE. */
static void att_tile(const float* q, ptrdiff_t ldq, const float* k, const float* v, ptrdiff_t pos,
                     int n_rows, int n_g, int hd, float scale, ptrdiff_t window, float* out,
                     ptrdiff_t ldo) {
    float s[ATT_TILE][ATT_BLOCK_MAX] __attribute__((aligned(32)));
    float m[ATT_TILE], l[ATT_TILE], corr[ATT_TILE], post[ATT_TILE];
    const float* qv[ATT_TILE];
    float* ov[ATT_TILE];
    ptrdiff_t lo[ATT_TILE], hi[ATT_TILE];
    int fresh[ATT_TILE];
    const ptrdiff_t B = att_block_keys(hd), end = pos + n_rows, first = att_first(pos, window);
    const int gc = ATT_TILE / n_rows < n_g ? ATT_TILE / n_rows : n_g;  /* heads per pass */
    for (int g0 = 0; g0 < n_g; g0 += gc) {
        const int ng = n_g - g0 < gc ? n_g - g0 : gc, nv = n_rows * ng;
        for (int i = 0; i < nv; i++) {  /* vector i: row i / ng, head g0 + i % ng */
            qv[i] = q + (i / ng) * ldq + (ptrdiff_t)(g0 + i % ng) * hd;
            ov[i] = out + (i / ng) * ldo + (ptrdiff_t)(g0 + i % ng) * hd;
        }
        for (ptrdiff_t jb = first - first % B; jb < end; jb += B) {
            for (int i = 0; i < nv; i++) {
                const ptrdiff_t p = pos + i / ng, f = att_first(p, window);
                lo[i] = f > jb ? f : jb;
                hi[i] = p + 1 < jb + B ? p + 1 : jb + B;
                fresh[i] = lo[i] == f;
            }
            /* Vectors next to each other (the heads of a row, and of the next rows where
               they see the same keys of the block) go through the kernels together. */
            /* Below 64 dims the reductions of the shared kernels cost more than they save. */
#define ATT_RUN(I) (hd >= 64 && (I) + 1 < nv && lo[(I) + 1] == lo[I] && hi[(I) + 1] == hi[I] \
                    && fresh[(I) + 1] == fresh[I])
            for (int i = 0; i < nv;) {  /* scores */
                const int mr = ATT_RUN(i) ? (ATT_RUN(i + 1) ? 3 : 2) : 1;
                if (lo[i] < hi[i]) {
                    float* si = s[i] + (lo[i] - jb);
                    if (mr == 3)
                        att_scores_mr(qv + i, 3, k + lo[i] * hd, hi[i] - lo[i], hd, scale, si);
                    else if (mr == 2)
                        att_scores_mr(qv + i, 2, k + lo[i] * hd, hi[i] - lo[i], hd, scale, si);
                    else
                        att_scores(qv[i], k + lo[i] * hd, hi[i] - lo[i], hd, scale, si);
                }
                i += mr;
            }
            for (int i = 0; i < nv; i++) {  /* online-softmax updates */
                if (lo[i] >= hi[i])
                    continue;
                const float mb = att_range_max(s[i], lo[i] - jb, hi[i] - jb);
                corr[i] = 1.0f;
                if (fresh[i]) {
                    m[i] = mb;
                    l[i] = 0.0f;
                } else if (mb > m[i]) {
                    corr[i] = sm_exp_ss(m[i] - mb);
                    m[i] = mb;
                    l[i] *= corr[i];
                }
                l[i] += att_exp_sum(s[i], lo[i] - jb, hi[i] - jb, m[i]);
                /* l >= 1: the running max contributed exp(0) */
                post[i] = hi[i] == pos + i / ng + 1 ? 1.0f / l[i] : 1.0f;
            }
            for (int i = 0; i < nv;) {  /* P.V */
                const int mr = ATT_RUN(i) ? (ATT_RUN(i + 1) ? 3 : 2) : 1;
                if (lo[i] < hi[i]) {
                    const float* pi = s[i] + (lo[i] - jb);
                    const ptrdiff_t n = hi[i] - lo[i];
                    if (mr == 3)
                        att_pv_mr(pi, 3, n, lo[i], v + lo[i] * hd, hd, ov + i, fresh[i], corr + i, post + i);
                    else if (mr == 2)
                        att_pv_mr(pi, 2, n, lo[i], v + lo[i] * hd, hd, ov + i, fresh[i], corr + i, post + i);
                    else
                        att_pv(pi, n, lo[i], v + lo[i] * hd, hd, 0, ov[i], fresh[i], corr[i], post[i]);
                }
                i += mr;
            }
#undef ATT_RUN
        }
    }
}

/* Rows per tile for n_g heads of hd: up to ATT_TILE query vectors and 32 KiB of queries
   (more rows reuse each K and V block more; measured on Zen 3, 8 rows of Gemma's 4 x 256
   beat 2 by ~5%). */
static int att_tile_rows(int n_g, int hd) {
    int rows = ATT_TILE / n_g, fit = 8192 / (n_g * hd);
    if (fit < rows) rows = fit;
    return rows < 1 ? 1 : rows;
}

/* The next task of a job whose tasks threads claim one at a time. */
static inline ptrdiff_t att_next_task(ptrdiff_t* counter)
{
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

#endif /* SMALLMIND_ATTENTION_H */
