/*
 * AVX-512 kernels for the K-quants Q4_K, Q5_K and Q6_K (256-element blocks), against
 * activations quantised per 256 (QK layout, _quant.h). Included by _matmul_impl.h;
 * every function is SMM_AVX512_TARGET and only reached when smm_isa() == SMM_ISA_AVX512.
 *
 * A block is processed in 4 chunks of 64 codes (one zmm). Codes come out in element
 * order from gf2p8affineqb, whose per-64-bit-lane bit matrices pick the low or the high
 * nibble of each byte, and also move a chosen bit (Q5_K's fifth bit) or bit pair (Q6_K's
 * two high bits) straight to bits 4-5. vpmaddubsw multiplies the unsigned codes by the
 * int8 activations into int16 pair sums (|sum| <= 2*63*127), and vpdpwssd multiplies
 * those by the sub-block scales (int16, spread over their lanes by vpermw) and
 * accumulates int32: one float conversion per 256 elements. Mins (Q4_K/Q5_K) use the
 * activations' sums per 32 elements, Q6_K's code offset of 32 their sums per 16.
 */
#ifndef SMALLMIND_MATMUL_K512_H
#define SMALLMIND_MATMUL_K512_H

#include "_matmul_avx512.h"
#include "_quant.h"

/* gf2p8affineqb matrices: result bit 4 <- source bit j; bits 4-5 <- bits 2k, 2k+1. */
#define SMM_GF_BIT4(j) ((long long)(1u << (j)) << 24)
#define SMM_GF_BITS45(k) (((long long)(1u << (2 * (k))) << 24) | ((long long)(1u << (2 * (k) + 1)) << 16))

/* vpermw indices spreading int16 scales over the 32 pair sums of a 64-code chunk. */
#define SMM_W16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
#define SMM_W8(v) v, v, v, v, v, v, v, v
static const int16_t smm_k_sc32[4][32] __attribute__((aligned(64))) = {
    {SMM_W16(0), SMM_W16(1)}, {SMM_W16(2), SMM_W16(3)}, {SMM_W16(4), SMM_W16(5)}, {SMM_W16(6), SMM_W16(7)}};
static const int16_t smm_k_sc16[4][32] __attribute__((aligned(64))) = {
    {SMM_W8(0), SMM_W8(1), SMM_W8(2), SMM_W8(3)}, {SMM_W8(4), SMM_W8(5), SMM_W8(6), SMM_W8(7)},
    {SMM_W8(8), SMM_W8(9), SMM_W8(10), SMM_W8(11)}, {SMM_W8(12), SMM_W8(13), SMM_W8(14), SMM_W8(15)}};

/* Per block and row: scales as int16 (8 for Q4_K/Q5_K, 16 for Q6_K), mins, d, dmin. */
typedef struct {
    __m256i sc;
    __m128i mins;
    float d, dmin;
} smm_k512_block;

SMM_INLINE512 void smm_k512_decode(const int type, const uint8_t* blk, smm_k512_block* k)
{
    if (type == SMM_Q6_K) {
        k->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(blk + 192)));
        k->d = smm_f16(blk + 208);
        return;
    }
    /* the 12 bytes of 6-bit scales and mins, 4 at a time in 32-bit words */
    const uint32_t s0 = smm_ld32(blk + 4), s1 = smm_ld32(blk + 8), s2 = smm_ld32(blk + 12);
    const uint32_t sc_lo = s0 & 0x3F3F3F3Fu, m_lo = s1 & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u);
    k->sc = _mm256_castsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)(sc_lo | (uint64_t)sc_hi << 32))));
    k->mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)(m_lo | (uint64_t)m_hi << 32)));
    k->d = smm_f16(blk);
    k->dmin = smm_f16(blk + 2);
}

/* Codes q*64 .. q*64+63 of a block as unsigned bytes; *scale: int16 multipliers. */
SMM_INLINE512 __m512i smm_k512_codes(const int type, const uint8_t* blk, const int q, const smm_k512_block* k,
                                     __m512i* scale)
{
    const long long LO = SMM_GF_LO, HI = SMM_GF_HI;
    if (type == SMM_Q6_K) {
        const int h = q >> 1, k2 = q & 1;
        __m512i ql = _mm512_loadu_si512(blk + 64 * h);
        __m512i lo = _mm512_gf2p8affine_epi64_epi8(ql, _mm512_set1_epi64(k2 ? HI : LO), 0);
        __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h)));
        const long long m0 = SMM_GF_BITS45(2 * k2), m1 = SMM_GF_BITS45(2 * k2 + 1);
        __m512i hb = _mm512_gf2p8affine_epi64_epi8(qh, _mm512_set_epi64(m1, m1, m1, m1, m0, m0, m0, m0), 0);
        *scale = _mm512_permutexvar_epi16(_mm512_load_si512(smm_k_sc16[q]), _mm512_castsi256_si512(k->sc));
        return _mm512_or_si512(lo, hb);
    }
    const uint8_t* qs = blk + (type == SMM_Q5_K ? 48 : 16) + 32 * q;
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)qs));
    v = _mm512_gf2p8affine_epi64_epi8(v, _mm512_set_epi64(HI, HI, HI, HI, LO, LO, LO, LO), 0);
    if (type == SMM_Q5_K) {
        __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(blk + 16)));
        const long long m0 = SMM_GF_BIT4(2 * q), m1 = SMM_GF_BIT4(2 * q + 1);
        v = _mm512_or_si512(v, _mm512_gf2p8affine_epi64_epi8(qh, _mm512_set_epi64(m1, m1, m1, m1, m0, m0, m0, m0), 0));
    }
    *scale = _mm512_permutexvar_epi16(_mm512_load_si512(smm_k_sc32[q]), _mm512_castsi256_si512(k->sc));
    return v;
}

/* R weight rows x C activation rows over all blocks: out[r][c] = dot(W[r], x[c]). */
SMM_INLINE512 void smm_qk_tile512(const int type, const int R, const int C, const uint8_t* w, ptrdiff_t wstride,
                                  const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols, float out[4][4])
{
    const ptrdiff_t nb = cols / 256;
    const int bb = smm_block_bytes(type);
    const int has_min = type != SMM_Q6_K;
    smm_actk a[4];
    __m512 acc[4][4];
    __m128 accm[4][4];
    SMM_TILE_START(a, smm_actk_at, acc, _mm512_setzero_ps())
    SMM_TILE_START(a, smm_actk_at, accm, _mm_setzero_ps())
    for (ptrdiff_t b = 0; b < nb; b++) {
        smm_k512_block kb[4];
        __m512i isum[4][4];
        smm_prefetch_next_tile(w, R, wstride, b * R * bb, R * bb);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            smm_k512_decode(type, w + r * wstride + b * bb, &kb[r]);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) isum[r][c] = _mm512_setzero_si512();
        }
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            __m512i wq[4], sc[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) wq[r] = smm_k512_codes(type, w + r * wstride + b * bb, q, &kb[r], &sc[r]);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                const __m512i xv = _mm512_loadu_si512(a[c].q + 256 * b + 64 * q);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++)
                    isum[r][c] = _mm512_dpwssd_epi32(isum[r][c], _mm512_maddubs_epi16(wq[r], xv), sc[r]);
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const float dx = a[c].d[b];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512i is = isum[r][c];
                if (type == SMM_Q6_K) { /* codes carry +32: subtract 32 * sum_i sc_i * bsum_i */
                    __m256i bs = _mm256_loadu_si256((const __m256i*)(a[c].bsum + 16 * b));
                    __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(bs, kb[r].sc), 5);
                    is = _mm512_sub_epi32(is, _mm512_zextsi256_si512(off));
                }
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(kb[r].d * dx), acc[r][c]);
                if (has_min) {
                    __m128i bsp = _mm_loadu_si128((const __m128i*)(a[c].bsp + 8 * b));
                    __m128 mn = _mm_cvtepi32_ps(_mm_madd_epi16(bsp, kb[r].mins));
                    accm[r][c] = _mm_fmadd_ps(mn, _mm_set1_ps(kb[r].dmin * dx), accm[r][c]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            float m = 0.0f;
            if (has_min) {
                __m128 v = _mm_add_ps(accm[r][c], _mm_movehl_ps(accm[r][c], accm[r][c]));
                m = _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
            }
            out[r][c] = _mm512_reduce_add_ps(acc[r][c]) - m;
        }
}

/* Rows [r0, r1) x all activation rows: tiles 4x1 when decoding, 2x4 for prompts. */
#define SMM_K512_RANGE(NAME, T)                                                                                \
    SMM_AVX512_TARGET static void NAME(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act,      \
                                       ptrdiff_t as)                                                           \
    {                                                                                                          \
        float out[4][4];                                                                                       \
        const ptrdiff_t ws = j->row_bytes, cols = j->cols, n = j->n;                                           \
        ptrdiff_t r = r0;                                                                                      \
        if (n == 1) {                                                                                          \
            for (; r + 4 <= r1; r += 4) {                                                                      \
                smm_qk_tile512(T, 4, 1, j->w + r * ws, ws, act, as, cols, out);                                \
                smm_store_tile(j, out, r, 0, 4, 1);                                                            \
            }                                                                                                  \
        } else {                                                                                               \
            for (; r + 2 <= r1; r += 2) SMM_TILES_OVER_N(smm_qk_tile512, T, 2, j->w + r * ws, r);                \
        }                                                                                                      \
        for (; r < r1; r++) SMM_TILES_OVER_N(smm_qk_tile512, T, 1, j->w + r * ws, r);                            \
    }

SMM_K512_RANGE(smm_q4_k_range512, SMM_Q4_K)
SMM_K512_RANGE(smm_q5_k_range512, SMM_Q5_K)
SMM_K512_RANGE(smm_q6_k_range512, SMM_Q6_K)

#endif
