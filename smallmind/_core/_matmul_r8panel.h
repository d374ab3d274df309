/*
 * Row tiling of the repacked (r8, _matmul_r8.h) products against several activation rows.
 * Included by _matmul_impl.h after smm_job; smm_r8_rows there hands it the whole 8-row
 * groups of a job.
 *
 * Few activation rows (a batch's decode steps): tiles of one group x 4 activation rows
 * (smm_r8_tile), which unpack the group's codes (nibble split, Q5 fifth bits) once per 4
 * activation rows.
 *
 * Prompts: that unpacking is a third of a Q5_0 tile's vector operations, and a tile reads
 * its activation codes once per group. Here the codes of two groups (16 rows) are unpacked
 * once into a panel on the stack, exactly the vectors the tile forms (bytes ready for
 * maddubs, the scales d and mins m as floats), a slice of SMM_R8P_KB blocks at a time so
 * that the panel stays in L1 however long the rows are; every activation row then runs
 * against the slice, each of its broadcast codes serving both groups. A row's running
 * sums cross the slices through `part` (a float stored and reloaded unchanged). The
 * integer sums are exact whatever their order (no int16 sum can saturate, see
 * _matmul_r8.h), and every float step per lane is the tile's own, in the same order, so
 * each output is bit for bit what smm_r8_tile and the n = 1 kernel compute.
 */
#ifndef SMALLMIND_MATMUL_R8PANEL_H
#define SMALLMIND_MATMUL_R8PANEL_H

#define SMM_R8P_GROUPS 2 /* 8-row groups per panel */
#define SMM_R8P_KB 32    /* blocks per panel slice at most: 2 x 32 x 320 B = 20 KB */
#define SMM_R8P_C 4      /* activation rows per register tile: 2 x 4 sums (G 2 x C 3, 3 x 3, 3 x 4, 4 x 2
                          * and 2 x 6 were no faster on Zen 3) */

/* -1: panels from 8 activation rows for 5-bit codes, 12 for 4-bit ones (cheaper to unpack:
 * at n = 8 their panels were 5-10% slower than the tiles, at 12 level, measured on Zen 3);
 * 1: always, 0: never (tests, benchmarks). K-quants: smm_rk_use_panel. */
static int smm_r8_panel_mode = -1;

/* One block of a group, unpacked: q[j] = chunk j's codes (lane r = row r), as the tile
 * forms them for maddubs; d and m (mins, 0 without) converted to float. */
typedef struct {
    __m256i q[8];
    __m256 d, m;
} smm_r8_unpacked;

/* Q8_0 has nothing to unpack but |w|: its tiles run at every n. */
static inline int smm_r8_use_panel(int type, ptrdiff_t n)
{
    if (type == SMM_Q8_0 || smm_r8_panel_mode == 0) return 0;
    return smm_r8_panel_mode == 1 || n >= (smm_r8_five(type) ? 8 : 12);
}

/* Blocks [b0, b0 + nbk) of group g into out[0, nbk). */
SMM_INLINE void smm_r8_unpack(const int type, const uint8_t* g, ptrdiff_t b0, ptrdiff_t nbk, smm_r8_unpacked* out)
{
    const int gbb = 8 * smm_block_bytes(type), qs = smm_r8_qs(type), five = smm_r8_five(type);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (ptrdiff_t i = 0; i < nbk; i++) {
        const uint8_t* blk = g + (b0 + i) * gbb;
        if (five) {
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) out[i].q[j] = smm_octet_code(blk + qs, j);
        } else {
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i*)(blk + qs + 32 * k));
                out[i].q[k] = _mm256_and_si256(raw, m4);
                out[i].q[k + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            }
        }
        out[i].d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)blk));
        out[i].m = smm_r8_has_min(type) ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(blk + 16)))
                                        : _mm256_setzero_ps();
    }
}

/*
 * G unpacked groups (p[g * SMM_R8P_KB + i] is group g's block b0 + i) x C activation rows,
 * blocks [b0, b0 + nbk): acc[g][c] (lane r = row 8g + r) carries the running sums in and out.
 */
SMM_INLINE void smm_r8_panel_tile(const int type, const int V, const int G, const int C, const smm_r8_unpacked* p,
                                  ptrdiff_t b0, ptrdiff_t nbk, const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                                  __m256 acc[SMM_R8P_GROUPS][SMM_R8P_C])
{
    const int has_min = smm_r8_has_min(type), five = smm_r8_five(type);
    const __m256i ones = _mm256_set1_epi16(1);
    smm_act32 a[SMM_R8P_C];
    __m256 sum[SMM_R8P_GROUPS][SMM_R8P_C];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        a[c] = smm_act32_at(act + c * astride, cols);
#pragma GCC unroll 8
        for (int g = 0; g < G; g++) sum[g][c] = acc[g][c];
    }
    for (ptrdiff_t i = 0; i < nbk; i++) {
        const ptrdiff_t b = b0 + i;
        __m256i s16[SMM_R8P_GROUPS][SMM_R8P_C], isum[SMM_R8P_GROUPS][SMM_R8P_C];
        /* 4-bit codes: one int16 sum of the 8 chunks; 5-bit: one per 4 chunks, each widened.
         * With vpdpbusd (V): one int32 chain of the 8 chunks, G x C >= 4 chains in flight */
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                const __m256i x = smm_r8_xchunk(&a[c], b, k);
#pragma GCC unroll 8
                for (int g = 0; g < G; g++) {
                    if (V) {
                        const __m256i from = k ? isum[g][c] : _mm256_setzero_si256();
                        isum[g][c] = smm_dpbusd(V, from, p[g * SMM_R8P_KB + i].q[k], x);
                        SMM_PIN(isum[g][c]);
                        continue;
                    }
                    const __m256i prod = _mm256_maddubs_epi16(p[g * SMM_R8P_KB + i].q[k], x);
                    s16[g][c] = k % 4 == 0 && (k == 0 || five) ? prod : _mm256_add_epi16(s16[g][c], prod);
                    SMM_PIN(s16[g][c]);
                    if (five && k == 3) isum[g][c] = _mm256_madd_epi16(s16[g][c], ones);
                }
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_broadcast_ss(a[c].d + b);
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) {
                __m256i is = isum[g][c];
                if (!V) {
                    const __m256i wide = _mm256_madd_epi16(s16[g][c], ones);
                    is = five ? _mm256_add_epi32(isum[g][c], wide) : wide;
                }
                /* codes stored with an offset: sum((q - o) x) = sum(q x) - o sum(x) */
                if (type == SMM_Q4_0) is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * a[c].sumq[b]));
                if (type == SMM_Q5_0) is = _mm256_sub_epi32(is, _mm256_set1_epi32(16 * a[c].sumq[b]));
                const smm_r8_unpacked* u = &p[g * SMM_R8P_KB + i];
                const __m256 s = _mm256_mul_ps(u->d, dx);
                if (has_min) {
                    const __m256 blockv = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), s,
                                                          _mm256_mul_ps(u->m, _mm256_broadcast_ss(a[c].s + b)));
                    sum[g][c] = _mm256_add_ps(sum[g][c], blockv);
                } else {
                    sum[g][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), s, sum[g][c]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++)
#pragma GCC unroll 8
        for (int g = 0; g < G; g++) acc[g][c] = sum[g][c];
}

static void smm_r8_panel_tile_any(int type, int vnni, int G, int C, const smm_r8_unpacked* p, ptrdiff_t b0,
                                  ptrdiff_t nbk, const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                                  __m256 acc[SMM_R8P_GROUPS][SMM_R8P_C])
{
    /* vpdpbusd only with C = 4 (G x C >= 4 chains); the 1-row tails stay on maddubs */
#define SMM_R8P_CASES(T, V)                                                                                    \
    if (G == 1 && C == 1) smm_r8_panel_tile(T, 0, 1, 1, p, b0, nbk, act, astride, cols, acc);                 \
    else if (G == 1) smm_r8_panel_tile(T, V, 1, SMM_R8P_C, p, b0, nbk, act, astride, cols, acc);              \
    else if (C == 1) smm_r8_panel_tile(T, 0, SMM_R8P_GROUPS, 1, p, b0, nbk, act, astride, cols, acc);         \
    else smm_r8_panel_tile(T, V, SMM_R8P_GROUPS, SMM_R8P_C, p, b0, nbk, act, astride, cols, acc);
    switch (type) {
    case SMM_Q4_0: SMM_VNNI_SWITCH(vnni, SMM_R8P_CASES, SMM_Q4_0) break;
    case SMM_Q4_1: SMM_VNNI_SWITCH(vnni, SMM_R8P_CASES, SMM_Q4_1) break;
    case SMM_Q5_0: SMM_VNNI_SWITCH(vnni, SMM_R8P_CASES, SMM_Q5_0) break;
    default: SMM_VNNI_SWITCH(vnni, SMM_R8P_CASES, SMM_Q5_1) break;
    }
#undef SMM_R8P_CASES
}

static void smm_r8_unpack_any(int type, const uint8_t* g, ptrdiff_t b0, ptrdiff_t nbk, smm_r8_unpacked* out)
{
    switch (type) {
    case SMM_Q4_0: smm_r8_unpack(SMM_Q4_0, g, b0, nbk, out); break;
    case SMM_Q4_1: smm_r8_unpack(SMM_Q4_1, g, b0, nbk, out); break;
    case SMM_Q5_0: smm_r8_unpack(SMM_Q5_0, g, b0, nbk, out); break;
    default: smm_r8_unpack(SMM_Q5_1, g, b0, nbk, out); break;
    }
}

/* Stores lane i of v[c] into y[t + c, r + i] (bias, accumulate) for c < C. */
static void smm_r8_store(const smm_job* j, const __m256* v, int C, ptrdiff_t r, ptrdiff_t t)
{
    float f[8];
    for (int c = 0; c < C; c++) {
        _mm256_storeu_ps(f, v[c]);
        for (int i = 0; i < 8; i++) smm_store1(j->y + (t + c) * j->ldy + r + i, f[i], j->bias, r + i, j->accumulate);
    }
}

/* Groups [r0, r1) (whole groups of 8 rows) through panels; n <= SMM_ACT_CHUNK. */
static void smm_r8_panel_rows(const smm_job* j, int type, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act,
                              ptrdiff_t astride)
{
    smm_r8_unpacked panel[SMM_R8P_GROUPS * SMM_R8P_KB];
    __m256 part[SMM_ACT_CHUNK][SMM_R8P_GROUPS]; /* running sums between slices */
    const ptrdiff_t nb = j->cols / 32, n = j->n;
    const ptrdiff_t slices = (nb + SMM_R8P_KB - 1) / SMM_R8P_KB, per = (nb + slices - 1) / slices;
    int G;
    for (ptrdiff_t r = r0; r < r1; r += 8 * G) {
        G = r1 - r >= 8 * SMM_R8P_GROUPS ? SMM_R8P_GROUPS : 1; /* the last groups one by one */
        for (ptrdiff_t b0 = 0; b0 < nb; b0 += per) {
            const ptrdiff_t nbk = nb - b0 < per ? nb - b0 : per;
            for (int g = 0; g < G; g++)
                smm_r8_unpack_any(type, j->w + (r + 8 * g) * j->row_bytes, b0, nbk, panel + g * SMM_R8P_KB);
            int C;
            for (ptrdiff_t t = 0; t < n; t += C) {
                C = n - t >= SMM_R8P_C ? SMM_R8P_C : 1; /* the last n % C rows one by one */
                __m256 acc[SMM_R8P_GROUPS][SMM_R8P_C];
                for (int c = 0; c < C; c++)
                    for (int g = 0; g < G; g++) acc[g][c] = b0 ? part[t + c][g] : _mm256_setzero_ps();
                smm_r8_panel_tile_any(type, j->vnni, G, C, panel, b0, nbk, act + t * astride, astride, j->cols, acc);
                for (int g = 0; g < G; g++) {
                    __m256 v[SMM_R8P_C];
                    for (int c = 0; c < C; c++) part[t + c][g] = v[c] = acc[g][c];
                    if (b0 + nbk == nb) smm_r8_store(j, v, C, r + 8 * g, t);
                }
            }
        }
    }
}

#define SMM_RKP_KB 8     /* blocks per K-quant panel slice: 8 x 2 KB of unpacked codes */

/* Panels for K-quants (smm_r8_panel_mode -1): Q5_K from 12 activation rows, Q4_K and Q6_K
 * from 32. Measured on Zen 3 (loaded; medians of paired runs, thread CPU time), Gemma 3
 * 270M's K-quant matrices (640 x 1024, 640 x 2048), plain-layout time over repacked time
 * with tiles / with panels: Q4_K n = 16 1.33 / 1.27, 48 1.02 / 1.12, 128 0.96 / 1.33; Q6_K
 * n = 16 1.23 / 1.09, 48 0.90 / 0.94, 128 0.89 / 1.11. Q5_K (640 x 2048, tile time over
 * panel time): 0.96 at n = 8, 1.2 at 16 and 64. */
static inline int smm_rk_use_panel(int type, ptrdiff_t n)
{
    if (smm_r8_panel_mode >= 0) return smm_r8_panel_mode;
    return n >= (type == SMM_Q5_K ? 12 : 32);
}

/* K-quant groups [r0, r1) (_matmul_rk.h; n <= SMM_ACT_CHUNK): tiles of 8 rows x 4 activation
 * rows that unpack the codes themselves, or for prompts (smm_rk_use_panel) the codes of each
 * group unpacked once per slice of SMM_RKP_KB blocks into a panel that every activation row
 * reads. The running sums cross slices in `part`, stored and reloaded unchanged, and the
 * panel holds the very vectors the tile forms, so every output is bit for bit the tiles'
 * and the n = 1 kernel's. */
static void smm_rk_rows(const smm_job* j, int type, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    const ptrdiff_t nb = j->cols / 256, n = j->n;
    const int use_panel = smm_rk_use_panel(type, n);
    const ptrdiff_t slices = use_panel ? (nb + SMM_RKP_KB - 1) / SMM_RKP_KB : 1, per = (nb + slices - 1) / slices;
    __m256i panel[64 * SMM_RKP_KB];
    __m256 part[SMM_ACT_CHUNK];
    for (ptrdiff_t r = r0; r < r1; r += 8) {
        const uint8_t* g = j->w + r * j->row_bytes;
        for (ptrdiff_t b0 = 0; b0 < nb; b0 += per) {
            const ptrdiff_t nbk = nb - b0 < per ? nb - b0 : per;
            if (use_panel) smm_rk_unpack(type, g, b0, nbk, panel);
            for (ptrdiff_t t = 0; t < n; t += 4) {
                const int C = (int)(n - t < 4 ? n - t : 4);
                __m256 acc[4];
                for (int c = 0; c < C; c++) acc[c] = b0 ? part[t + c] : _mm256_setzero_ps();
                const uint8_t* a = act + t * astride;
                smm_rk_tile_any(type, C, use_panel ? panel : NULL, g, b0, nbk, a, astride, j->cols, acc);
                if (b0 + nbk == nb) smm_r8_store(j, acc, C, r, t);
                else
                    for (int c = 0; c < C; c++) part[t + c] = acc[c];
            }
        }
    }
}

/* Groups [r0, r1) of a repacked W (whole groups of 8 rows) against all activation rows. */
static void smm_r8_groups(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    const int type = j->type & ~SMM_R8;
    if (smm_rk_supported(type)) {
        smm_rk_rows(j, type, r0, r1, act, astride);
        return;
    }
    if (smm_r8_use_panel(type, j->n)) {
        smm_r8_panel_rows(j, type, r0, r1, act, astride);
        return;
    }
    for (ptrdiff_t r = r0; r < r1; r += 8) {
        for (ptrdiff_t t = 0; t < j->n; t += 4) {
            const int C = (int)(j->n - t < 4 ? j->n - t : 4);
            __m256 out[4];
            smm_r8_tile_any(type, C, j->vnni, j->w + r * j->row_bytes, j->cols / 32, act + t * astride, astride,
                            j->cols, out);
            smm_r8_store(j, out, C, r, t);
        }
    }
}

#endif
