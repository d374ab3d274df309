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
 * (its blocks are cheap, so the per-tile start and end weigh more). From n = 8 rows are
 * unpacked once into panels instead (smm_qk_rows_panel below).
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

/*
 * Prompts (n >= SMM_QK_PANEL_MIN_N): the tiles above unpack a row's codes and scales
 * afresh for every 4 activation rows, which for Q4_K is a third of a tile's vector
 * operations and for Q6_K (codes split over two arrays) over half. Here 4 weight rows are
 * unpacked once into a panel on the stack, exactly the vectors the tile kernel forms
 * (codes of each 32-element sub-block as bytes, its int16 scales laid out for madd, d, the
 * mins, Q6_K's offset term), and every activation row then runs against the panel: 3
 * operations per row, sub-block and activation row (maddubs, madd, add), its loads memory
 * operands. The integer sums are exact and the float steps per lane are the tile kernel's
 * own, in the same order, so each output is bit for bit what smm_qk_tile computes: results
 * do not depend on n or on which path ran.
 */
#define SMM_QK_PANEL_MIN_N 8
#define SMM_QK_PANEL_ROWS 4
#define SMM_QK_PANEL_NB 16 /* blocks of 256 per panel row: columns <= 4096 (38 KB of stack) */

typedef struct {
    __m256i q[8];  /* codes of sub-block s */
    __m256i sc[8]; /* smm_kscale(s) */
    __m256 d, mins;
    __m256i off;
} smm_qk_unpacked;

static void smm_qk_unpack(int type, const uint8_t* row, ptrdiff_t nb, smm_qk_unpacked* out)
{
#define SMM_QK_UNPACK(T)                                                        \
    for (ptrdiff_t b = 0; b < nb; b++) {                                        \
        const uint8_t* blk = row + b * smm_block_bytes(T);                      \
        smm_kblock kb;                                                          \
        smm_kblock_decode(T, blk, &kb);                                         \
        _Pragma("GCC unroll 8") for (int s = 0; s < 8; s++) {                   \
            out[b].q[s] = smm_ksub_avx2(T, blk, s);                             \
            out[b].sc[s] = smm_kscale(&kb, s);                                  \
        }                                                                       \
        out[b].d = kb.d;                                                        \
        out[b].mins = T == SMM_Q6_K ? _mm256_setzero_ps() : kb.mins;            \
        out[b].off = T == SMM_Q6_K ? kb.off : _mm256_setzero_si256();           \
    }
    switch (type) {
    case SMM_Q4_K: SMM_QK_UNPACK(SMM_Q4_K) break;
    case SMM_Q5_K: SMM_QK_UNPACK(SMM_Q5_K) break;
    default: SMM_QK_UNPACK(SMM_Q6_K) break;
    }
#undef SMM_QK_UNPACK
}

/* R unpacked rows (p[r * pstride] is row r's first block) x C activation rows: the same
 * steps as smm_qk_tile_avx2 for types with codes >= 0 (Q4_K, Q5_K, Q6_K). */
SMM_INLINE void smm_qk_panel_tile(const int type, const int R, const int C, const smm_qk_unpacked* p,
                                  ptrdiff_t pstride, const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                                  float out[4][4])
{
    const ptrdiff_t nb = cols / 256;
    const int has_min = type != SMM_Q6_K;
    __m256 acc[4][4];
    smm_actk a[4];
    SMM_TILE_START(a, smm_actk_at, acc, _mm256_setzero_ps())
    for (ptrdiff_t b = 0; b < nb; b++) {
        __m256i isum[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int c = 0; c < C; c++)
                isum[r][c] = type == SMM_Q6_K
                    ? _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)(a[c].bsum + 16 * b)), p[r * pstride + b].off)
                    : _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int s = 0; s < 8; s++) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const smm_qk_unpacked* u = &p[r * pstride + b];
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i*)(a[c].q + 256 * b + 32 * s));
                    isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(u->q[s], xv), u->sc[s]));
                    SMM_PIN(isum[r][c]);
                }
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_broadcast_ss(a[c].d + b);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                smm_qk_fold(has_min, &acc[r][c], isum[r][c], p[r * pstride + b].d, p[r * pstride + b].mins, dx, a[c].xs + 8 * b);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) out[r][c] = smm_hsum8(acc[r][c]);
}

static void smm_qk_panel_tile_any(const smm_job* j, int R, int C, const smm_qk_unpacked* p, ptrdiff_t pstride,
                                  ptrdiff_t r, ptrdiff_t t, const uint8_t* act, ptrdiff_t astride)
{
    float out[4][4] = {{0.0f}};
    const uint8_t* a = act + t * astride;
#define SMM_QK_PANEL_CASES(T)                                                                \
    if (R == 2) {                                                                        \
        if (C == 4) smm_qk_panel_tile(T, 2, 4, p, pstride, a, astride, j->cols, out);    \
        else if (C == 3) smm_qk_panel_tile(T, 2, 3, p, pstride, a, astride, j->cols, out); \
        else if (C == 2) smm_qk_panel_tile(T, 2, 2, p, pstride, a, astride, j->cols, out); \
        else smm_qk_panel_tile(T, 2, 1, p, pstride, a, astride, j->cols, out);           \
    } else if (C == 4) smm_qk_panel_tile(T, 1, 4, p, pstride, a, astride, j->cols, out); \
    else smm_qk_panel_tile(T, 1, 1, p, pstride, a, astride, j->cols, out);
    switch (j->type) {
    case SMM_Q4_K: SMM_QK_PANEL_CASES(SMM_Q4_K) break;
    case SMM_Q5_K: SMM_QK_PANEL_CASES(SMM_Q5_K) break;
    default: SMM_QK_PANEL_CASES(SMM_Q6_K) break;
    }
#undef SMM_QK_PANEL_CASES
    smm_store_tile(j, out, r, t, R, C);
}

static int smm_qk_panel_fits(const smm_job* j)
{
    return j->n >= SMM_QK_PANEL_MIN_N && j->cols / 256 <= SMM_QK_PANEL_NB && j->type != SMM_Q8_K;
}

/* Rows [r0, r1) against all activation rows through panels of up to 4 unpacked rows: the
 * panel's row pairs take turns on each 4 activation rows (the tiling of smm_qk_rows), a
 * last odd row alone (1 x 4, then 1 x 1). */
static void smm_qk_rows_panel(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    smm_qk_unpacked panel[SMM_QK_PANEL_ROWS * SMM_QK_PANEL_NB];
    const ptrdiff_t nb = j->cols / 256, n = j->n;
    for (ptrdiff_t r = r0; r < r1; r += SMM_QK_PANEL_ROWS) {
        const int rows = r1 - r < SMM_QK_PANEL_ROWS ? (int)(r1 - r) : SMM_QK_PANEL_ROWS;
        for (int i = 0; i < rows; i++) smm_qk_unpack(j->type, j->w + (r + i) * j->row_bytes, nb, panel + i * nb);
        const int pairs = rows / 2;
        for (ptrdiff_t t = 0; t < n; t += 4) {
            const int C = n - t < 4 ? (int)(n - t) : 4;
            for (int p = 0; p < pairs; p++) smm_qk_panel_tile_any(j, 2, C, panel + 2 * p * nb, nb, r + 2 * p, t, act, astride);
        }
        if (rows & 1) {
            const smm_qk_unpacked* last = panel + (rows - 1) * nb;
            ptrdiff_t t = 0;
            for (; t + 4 <= n; t += 4) smm_qk_panel_tile_any(j, 1, 4, last, nb, r + rows - 1, t, act, astride);
            for (; t < n; t++) smm_qk_panel_tile_any(j, 1, 1, last, nb, r + rows - 1, t, act, astride);
        }
    }
}

/* Rows [r0, r1) of a K-quant weight against all activation rows: 4 x n tiles for n <= 2;
 * else each group of 4 rows as two pairs that take turns on the same 1-4 activation rows
 * (read from L2 once per group, then from L1), a last odd row alone. */
static void smm_qk_rows(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    const ptrdiff_t n = j->n;
    ptrdiff_t r = r0;
    if (smm_qk_panel_fits(j)) {
        smm_qk_rows_panel(j, r0, r1, act, astride);
        return;
    }
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
