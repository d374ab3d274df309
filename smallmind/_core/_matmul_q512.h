/*
 * AVX-512 VNNI kernels for the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
 * Included by _matmul_impl.h after smm_job; every function here is SMM_AVX512_TARGET
 * and only reached when smm_isa() == SMM_ISA_AVX512.
 *
 * One zmm holds a pair of blocks (64 codes), interleaved in 4-byte groups: bytes
 * [8k, 8k+4) are codes 4k..4k+3 of the first block, [8k+4, 8k+8) the same codes of the
 * second (the activations are stored the same way, see _quant.h). vpdpbusd multiplies
 * the unsigned weight codes by the signed int8 activations and sums each 4-byte group
 * into an int32 lane, so even lanes belong to the first block and odd lanes to the
 * second, and one vbroadcastsd of the pair's two scales (a load, no shuffle port)
 * scales the lanes in the FMA.
 *
 * Unpacking Q4/Q5 codes takes two instructions: vpermb picks, for every output byte,
 * the packed byte holding its nibble, and gf2p8affineqb, with one bit matrix per 64-bit
 * lane, keeps the low nibble (codes 0-15, in 64-bit lanes 0-3) or moves the high nibble
 * down (codes 16-31, lanes 4-7). Q5's fifth bits come from the two 32-bit qh words, spread
 * into a 64-bit byte mask with pdep. Q8_0 codes are signed; flipping their top bit makes
 * them unsigned (w + 128). Codes stored with an offset (-8 for Q4_0, -16 for Q5_0, the
 * +128 of Q8_0) are corrected exactly in the integer accumulator: vpdpbusd starts from
 * per-lane corrections prepared with the activations (see _quant.h).
 *
 * Block scales are read 16 blocks at a time: one gather fetches the f16 scales (and
 * mins) of a row, S = d_w * d_x is a 16-lane product stored for the broadcasts, and the
 * mins of Q4_1/Q5_1 are one 16-lane FMA with the activation sums. A short last chunk
 * (cols = 576 is 16 + 2 blocks) shares one gather between the 4 rows of a tile, since
 * the per-chunk work would otherwise cost as much as the 2 blocks themselves.
 */
#ifndef SMALLMIND_MATMUL_Q512_H
#define SMALLMIND_MATMUL_Q512_H

#include "_matmul_avx512.h"
#include "_quant.h"

/* vpermb indices for a pair of blocks `bb` bytes apart whose packed nibbles start at
 * `qoff`: output byte i holds code e = 4*(i/8) + i%4 of block (i/4)%2, found in packed
 * byte e%16 (low nibble for e < 16, high nibble otherwise). */
#define SMM_PI(i, bb, qoff) ((((i) >> 2) & 1) * (bb) + (qoff) + ((4 * ((i) >> 3) + ((i) & 3)) & 15))
#define SMM_PI8(k, bb, qoff) SMM_PI(8 * (k), bb, qoff), SMM_PI(8 * (k) + 1, bb, qoff), SMM_PI(8 * (k) + 2, bb, qoff), \
    SMM_PI(8 * (k) + 3, bb, qoff), SMM_PI(8 * (k) + 4, bb, qoff), SMM_PI(8 * (k) + 5, bb, qoff),                 \
    SMM_PI(8 * (k) + 6, bb, qoff), SMM_PI(8 * (k) + 7, bb, qoff)
#define SMM_PAIR_IDX(bb, qoff) { SMM_PI8(0, bb, qoff), SMM_PI8(1, bb, qoff), SMM_PI8(2, bb, qoff), SMM_PI8(3, bb, qoff), \
                                 SMM_PI8(4, bb, qoff), SMM_PI8(5, bb, qoff), SMM_PI8(6, bb, qoff), SMM_PI8(7, bb, qoff) }
static const uint8_t smm_pair_idx_q4_0[64] __attribute__((aligned(64))) = SMM_PAIR_IDX(18, 2);
static const uint8_t smm_pair_idx_q4_1[64] __attribute__((aligned(64))) = SMM_PAIR_IDX(20, 4);
static const uint8_t smm_pair_idx_q5_0[64] __attribute__((aligned(64))) = SMM_PAIR_IDX(22, 6);
static const uint8_t smm_pair_idx_q5_1[64] __attribute__((aligned(64))) = SMM_PAIR_IDX(24, 8);
/* vpermt2b indices interleaving two 32-byte Q8_0 code arrays (table 2 = +64). */
#define SMM_PI8_Q8(k) 4 * (k), 4 * (k) + 1, 4 * (k) + 2, 4 * (k) + 3, 64 + 4 * (k), 65 + 4 * (k), 66 + 4 * (k), 67 + 4 * (k)
static const uint8_t smm_pair_idx_q8_0[64] __attribute__((aligned(64))) = {
    SMM_PI8_Q8(0), SMM_PI8_Q8(1), SMM_PI8_Q8(2), SMM_PI8_Q8(3), SMM_PI8_Q8(4), SMM_PI8_Q8(5), SMM_PI8_Q8(6), SMM_PI8_Q8(7)};

/* gf2p8affineqb matrices: keep bits 0-3 (low nibble) / move bits 4-7 to 0-3 (high). */
#define SMM_GF_LO 0x0102040800000000LL
#define SMM_GF_HI 0x1020408000000000LL

SMM_INLINE512 const uint8_t* smm_pair_idx(const int type)
{
    switch (type) {
    case SMM_Q4_0: return smm_pair_idx_q4_0;
    case SMM_Q4_1: return smm_pair_idx_q4_1;
    case SMM_Q5_0: return smm_pair_idx_q5_0;
    case SMM_Q5_1: return smm_pair_idx_q5_1;
    default: return smm_pair_idx_q8_0;
    }
}

/* Codes of blocks b, b+1 as 64 unsigned bytes in the interleaved pair order. With
 * `half` only block b is real: the other half's codes are garbage, which multiply zero
 * activations. `masked` loads only the bytes of the block(s), for the last blocks of a
 * matrix where a full 64-byte load could cross into an unmapped page. */
SMM_INLINE512 __m512i smm_w_pair512(const int type, const uint8_t* b, const int half, const int masked, __m512i pidx,
                                    __m512i gf)
{
    const int bb = smm_block_bytes(type);
    if (type == SMM_Q8_0) {
        __m512i lo = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(b + 2)));
        __m512i hi = half && masked ? _mm512_setzero_si512()
                                    : _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(b + bb + 2)));
        return _mm512_xor_si512(_mm512_permutex2var_epi8(lo, pidx, hi), _mm512_set1_epi8((char)0x80));
    }
    const int nbytes = half ? bb : 2 * bb;
    __m512i raw = masked ? _mm512_maskz_loadu_epi8((__mmask64)((1ULL << nbytes) - 1), b) : _mm512_loadu_si512(b);
    __m512i q = _mm512_gf2p8affine_epi64_epi8(_mm512_permutexvar_epi8(pidx, raw), gf, 0);
    if (type == SMM_Q5_0 || type == SMM_Q5_1) {
        const int qh = type == SMM_Q5_0 ? 2 : 4;
        uint64_t bits = _pdep_u64(smm_ld32(b + qh), 0x0F0F0F0F0F0F0F0FULL);
        if (!half) bits |= _pdep_u64(smm_ld32(b + bb + qh), 0xF0F0F0F0F0F0F0F0ULL);
        q = _mm512_mask_add_epi8(q, _cvtu64_mask64(bits), q, _mm512_set1_epi8(0x10));
    }
    return q;
}

/* Low halves (d) of 16 gathered dwords, and high halves (m) when `both`, as floats. */
SMM_INLINE512 __m512 smm_f16_lo16(__m512i g) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)); }
SMM_INLINE512 void smm_f16_pairs16(__m512i g, __m512* lo, __m512* hi)
{
    /* one word permute gathers the 16 low halves then the 16 high halves */
    const __m512i sel = _mm512_setr_epi32(0x00020000, 0x00060004, 0x000A0008, 0x000E000C, 0x00120010, 0x00160014,
                                          0x001A0018, 0x001E001C, 0x00030001, 0x00070005, 0x000B0009, 0x000F000D,
                                          0x00130011, 0x00170015, 0x001B0019, 0x001F001D);
    __m512i w = _mm512_permutexvar_epi16(sel, g);
    *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(w));
    *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(w, 1));
}

/* Lane k of a tail chunk shared by R rows of `nbc` blocks each (R * nbc <= 16): row k / nbc,
 * block k % nbc (rows past R are masked off by the caller). */
static const int32_t smm_tail_row[5][16] __attribute__((aligned(64))) = {
    {0}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7}, {0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5},
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3}};
static const int32_t smm_tail_blk[5][16] __attribute__((aligned(64))) = {
    {0}, {0}, {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0},
    {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}};

/* The two floats at p as a 64-bit pair broadcast over 16 lanes: a, b, a, b, ... */
SMM_INLINE512 __m512 smm_bcast_pair(const float* p)
{
    return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_load_sd((const double*)p)));
}

/*
 * R weight rows x C activation rows over all blocks: out[r][c] = dot(W[r], x[c]).
 */
SMM_INLINE512 void smm_q32_tile512(const int type, const int R, const int C, const int masked, const uint8_t* w,
                                   ptrdiff_t wstride, const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                                   float out[4][4])
{
    const ptrdiff_t nb = cols / 32;
    const int bb = smm_block_bytes(type);
    const int has_min = type == SMM_Q4_1 || type == SMM_Q5_1;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i gidx = _mm512_mullo_epi32(iota, _mm512_set1_epi32(bb));
    const __m512i pidx = _mm512_load_si512(smm_pair_idx(type));
    const __m512i gf = _mm512_set_epi64(SMM_GF_HI, SMM_GF_HI, SMM_GF_HI, SMM_GF_HI,
                                        SMM_GF_LO, SMM_GF_LO, SMM_GF_LO, SMM_GF_LO);
    smm_act32 a[4];
    __m512 acc[4][4];
    /* S[r][c][i]: d_w * d_x of block i of the chunk; a tail chunk shared by all rows
     * uses S[0][c][r*nbc + i] instead. One spare lane keeps the pair read of an odd last
     * block in bounds (its scale multiplies zero codes). */
    float S[4][4][16 + 16] __attribute__((aligned(64)));
    SMM_TILE_START(a, smm_act32_at, acc, _mm512_setzero_ps())

    for (ptrdiff_t b0 = 0; b0 < nb; b0 += 16) {
        const int nbc = (int)(nb - b0 < 16 ? nb - b0 : 16);
        const __mmask16 km = smm_mask16(nbc);
        const int shared = R > 1 && R * nbc <= 16; /* one gather serves all R rows */
        if (shared) {
            const __m512i row = _mm512_load_si512(smm_tail_row[nbc]), blk = _mm512_load_si512(smm_tail_blk[nbc]);
            const __mmask16 kr = smm_mask16(R * nbc);
            const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(row, _mm512_set1_epi32((int)wstride)),
                                                 _mm512_mullo_epi32(blk, _mm512_set1_epi32(bb)));
            __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), kr, idx, w + b0 * bb, 1);
            __m512 dw, mw;
            if (has_min) smm_f16_pairs16(g, &dw, &mw);
            else dw = smm_f16_lo16(g);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                __m512 dx = _mm512_permutexvar_ps(blk, _mm512_maskz_loadu_ps(km, a[c].d + b0));
                _mm512_store_ps(&S[0][c][0], _mm512_mul_ps(dw, dx));
                _mm512_store_ps(&S[0][c][16], _mm512_setzero_ps());
                if (has_min) {
                    __m512 off = _mm512_mul_ps(mw, _mm512_permutexvar_ps(blk, _mm512_maskz_loadu_ps(km, a[c].s + b0)));
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++)
                        acc[r][c] = _mm512_mask_add_ps(acc[r][c], (__mmask16)(((1u << nbc) - 1) << (r * nbc)),
                                                       acc[r][c], off);
                }
            }
        } else {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), km, gidx, w + r * wstride + b0 * bb, 1);
                __m512 dw, mw;
                if (has_min) smm_f16_pairs16(g, &dw, &mw);
                else dw = smm_f16_lo16(g);
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    _mm512_store_ps(S[r][c], _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(km, a[c].d + b0)));
                    _mm512_store_ps(&S[r][c][16], _mm512_setzero_ps());
                    if (has_min) acc[r][c] = _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(km, a[c].s + b0), acc[r][c]);
                }
            }
        }
        /* an odd last block pairs with zero codes (and zero activations, see _quant.h);
         * the pair loop is written twice so that `shared` is not tested inside it */
#define SMM_PAIR_LOOP(SCALE_PTR)                                                                                  \
    for (int p = 0; p < npairs; p++) {                                                                            \
        const int half = 2 * p + 1 == nbc;                                                                        \
        __m512i wq[4];                                                                                            \
        smm_prefetch_next_tile(w, R, wstride, (b0 + 2 * p) * R * bb, 2 * R * bb);                              \
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                                       \
            wq[r] = smm_w_pair512(type, w + r * wstride + (b0 + 2 * p) * bb, half, masked, pidx, gf);             \
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) {                                                     \
            const __m512i xv = _mm512_load_si512(a[c].q + 32 * (b0 + 2 * p));                                     \
            const __m512i z0 = has_min ? _mm512_setzero_si512() : _mm512_load_si512(a[c].corr + 8 * (b0 + 2 * p)); \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                                 \
                __m512i z = _mm512_dpbusd_epi32(z0, wq[r], xv);                                                   \
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(z), smm_bcast_pair(SCALE_PTR), acc[r][c]);         \
            }                                                                                                     \
        }                                                                                                         \
    }
        const int npairs = (nbc + 1) / 2;
        if (shared) {
            SMM_PAIR_LOOP(&S[0][c][r * nbc + 2 * p])
        } else {
            SMM_PAIR_LOOP(&S[r][c][2 * p])
        }
#undef SMM_PAIR_LOOP
    }
    if (R == 4) {
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            float v[4];
            _mm_storeu_ps(v, smm_reduce4_512(acc[0][c], acc[1][c], acc[2][c], acc[3][c]));
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) out[r][c] = v[r];
        }
    } else {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
    }
}

/* Rows [r0, r1) x all activation rows, tiles 4x1 (decoding) or 4x4 (prompts). Tiles
 * within 64 bytes of the end of the matrix use masked loads. */
#define SMM_Q512_TILE(T, R, C, w, ws, a, as, cols, out)                                                        \
    do {                                                                                                       \
        if ((w) + (R) * (ws) + 64 > wend) smm_q32_tile512(T, R, C, 1, w, ws, a, as, cols, out);                \
        else smm_q32_tile512(T, R, C, 0, w, ws, a, as, cols, out);                                              \
    } while (0)
#define SMM_Q512_RANGE(NAME, T)                                                                                \
    SMM_AVX512_TARGET static void NAME(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act,      \
                                       ptrdiff_t as)                                                           \
    {                                                                                                          \
        float out[4][4];                                                                                       \
        const ptrdiff_t ws = j->row_bytes, cols = j->cols, n = j->n;                                           \
        const uint8_t* wend = j->w + j->rows * ws;                                                             \
        ptrdiff_t r = r0;                                                                                      \
        for (; r + 4 <= r1; r += 4) SMM_TILES_OVER_N(SMM_Q512_TILE, T, 4, j->w + r * ws, r);                    \
        for (; r < r1; r++) SMM_TILES_OVER_N(SMM_Q512_TILE, T, 1, j->w + r * ws, r);                             \
    }

SMM_Q512_RANGE(smm_q4_0_range512, SMM_Q4_0)
SMM_Q512_RANGE(smm_q4_1_range512, SMM_Q4_1)
SMM_Q512_RANGE(smm_q5_0_range512, SMM_Q5_0)
SMM_Q512_RANGE(smm_q5_1_range512, SMM_Q5_1)
SMM_Q512_RANGE(smm_q8_0_range512, SMM_Q8_0)

#include "_matmul_k512.h"

/* Runs rows [r0, r1) with an AVX-512 kernel if there is one for the type; 0 if not. */
static int smm_q_range_avx512(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t as)
{
    switch (j->type) {
    case SMM_Q4_0: smm_q4_0_range512(j, r0, r1, act, as); return 1;
    case SMM_Q4_1: smm_q4_1_range512(j, r0, r1, act, as); return 1;
    case SMM_Q5_0: smm_q5_0_range512(j, r0, r1, act, as); return 1;
    case SMM_Q5_1: smm_q5_1_range512(j, r0, r1, act, as); return 1;
    case SMM_Q8_0: smm_q8_0_range512(j, r0, r1, act, as); return 1;
    case SMM_Q4_K: smm_q4_k_range512(j, r0, r1, act, as); return 1;
    case SMM_Q5_K: smm_q5_k_range512(j, r0, r1, act, as); return 1;
    case SMM_Q6_K: smm_q6_k_range512(j, r0, r1, act, as); return 1;
    default: return 0;
    }
}

#endif
