/*
 * Row and activation tiling of the K-quant (Q4_K, Q5_K, Q6_K, Q8_K) products on the AVX2
 * path; the tile kernel is smm_qk_tile_avx2 in _matmul_avx2.h. Included by _matmul_impl.h
 * (after smm_job and smm_store_tile), whose smm_quant_rows hands K-quant rows here when no
 * AVX-512 kernel took them.
 *
 * For 3 or more activation rows, pairs of weight rows against 1-4 activation rows: a 4 x 2
 * tile (the 32-block types' choice from n = 2) keeps four rows' decoded scales live beside
 * its 8 sums and spills, so n = 3 as 4 x 2 + 4 x 1 tiles took 1.5x the time of 2 x 3
 * tiles, and n = 7 1.25x (Q5_K, Q6_K; measured on Zen 3). For n = 2, 4 x 2 stays: two
 * 2 x 2 tiles were 7% faster for Q6_K but 8% slower for Q4_K, the bulk of K-quant models
 * (its blocks are cheap, so the per-tile start and end weigh more).
 */
#ifndef SMALLMIND_MATMUL_QK_H
#define SMALLMIND_MATMUL_QK_H

/* The kernel instantiated for the tile shapes the tiling below uses (R in 4, 2, 1). */
#define SMM_QK_TILE(T, R_, C_) smm_qk_tile_avx2(T, R_, C_, w, ws, a, astride, cols, out)
#define SMM_QK_TILE_CASES(T)                                                       \
    if (R == 4) {                                                                  \
        if (C == 1) SMM_QK_TILE(T, 4, 1);                                          \
        else SMM_QK_TILE(T, 4, 2);                                                 \
    } else if (R == 2) {                                                           \
        if (C == 4) SMM_QK_TILE(T, 2, 4);                                          \
        else if (C == 3) SMM_QK_TILE(T, 2, 3);                                     \
        else if (C == 2) SMM_QK_TILE(T, 2, 2);                                     \
        else SMM_QK_TILE(T, 2, 1);                                                 \
    } else if (C == 4) SMM_QK_TILE(T, 1, 4);                                       \
    else SMM_QK_TILE(T, 1, 1);

static void smm_qk_tile(const smm_job* j, int R, int C, ptrdiff_t r, ptrdiff_t t, const uint8_t* act,
                        ptrdiff_t astride)
{
    float out[4][4] = {{0.0f}}; /* (GCC cannot tell that every R, C here has its kernel) */
    const uint8_t* w = j->w + r * j->row_bytes;
    const uint8_t* a = act + t * astride;
    const ptrdiff_t ws = j->row_bytes, cols = j->cols;
    switch (j->type) {
    case SMM_Q4_K: SMM_QK_TILE_CASES(SMM_Q4_K) break;
    case SMM_Q5_K: SMM_QK_TILE_CASES(SMM_Q5_K) break;
    case SMM_Q6_K: SMM_QK_TILE_CASES(SMM_Q6_K) break;
    default: SMM_QK_TILE_CASES(SMM_Q8_K) break;
    }
    smm_store_tile(j, out, r, t, R, C);
}

/* Rows [r0, r1) of a K-quant weight against all activation rows: 4 x n tiles for n <= 2;
 * else each group of 4 rows as two pairs that take turns on the same 1-4 activation rows
 * (read from L2 once per group, then from L1), a last odd row alone. */
static void smm_qk_rows(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    const ptrdiff_t n = j->n;
    ptrdiff_t r = r0;
    if (n <= 2) {
        for (; r + 4 <= r1; r += 4) smm_qk_tile(j, 4, (int)n, r, 0, act, astride);
        for (; r < r1; r++)
            for (ptrdiff_t t = 0; t < n; t++) smm_qk_tile(j, 1, 1, r, t, act, astride);
        return;
    }
    while (r + 2 <= r1) {
        const int pairs = r + 4 <= r1 ? 2 : 1;
        for (ptrdiff_t t = 0; t < n; t += 4)
            for (int p = 0; p < pairs; p++) smm_qk_tile(j, 2, n - t < 4 ? (int)(n - t) : 4, r + 2 * p, t, act, astride);
        r += 2 * pairs;
    }
    for (; r < r1; r++) {
        ptrdiff_t t = 0;
        for (; t + 4 <= n; t += 4) smm_qk_tile(j, 1, 4, r, t, act, astride);
        for (; t < n; t++) smm_qk_tile(j, 1, 1, r, t, act, astride);
    }
}

#endif
