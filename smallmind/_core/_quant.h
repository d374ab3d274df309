/*
 * GGML weight storage formats: block layouts, one-row dequantisation, and the 8-bit
 * quantisation of activations that the integer dot products consume.
 *
 * Block layouts (bytes, little endian; "f16" is an IEEE half) follow ggml exactly:
 *
 *   Q4_0  18 B / 32: f16 d | u8 qs[16]            x[j] = d*((qs[j]&15)-8), x[j+16] = d*((qs[j]>>4)-8)
 *   Q4_1  20 B / 32: f16 d, f16 m | u8 qs[16]     x = d*q + m, same nibble order
 *   Q5_0  22 B / 32: f16 d | u32 qh | u8 qs[16]   5th bit of element j is bit j of qh; x = d*(q-16)
 *   Q5_1  24 B / 32: f16 d, f16 m | u32 qh | qs   x = d*q + m
 *   Q8_0  34 B / 32: f16 d | i8 qs[32]            x = d*q
 *   Q4_K 144 B / 256: f16 d, f16 dmin | u8 scales[12] | u8 qs[128]
 *         8 sub-blocks of 32 with 6-bit scale sc[j] and min m[j]: x = d*sc[j]*q - dmin*m[j];
 *         qs[32c..32c+32) holds sub-block 2c in its low nibbles and 2c+1 in its high ones.
 *   Q5_K 176 B / 256: as Q4_K plus u8 qh[32] before qs: bit j of qh[l] is the 5th bit of
 *         element l of sub-block j.
 *   Q6_K 210 B / 256: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d; 16 sub-blocks of 16,
 *         x = d*scales[e/16]*(q-32), q = 4 low bits from ql and 2 high bits from qh
 *         (see smm_dequant_q6_k for the interleaving).
 *   Q8_K 292 B / 256: f32 d | i8 qs[256] | i16 bsums[16]   x = d*q
 *
 * Weight rows are not necessarily aligned (18-byte blocks), so multi-byte fields are
 * read with memcpy, which compiles to a plain unaligned load.
 */
#ifndef SMALLMIND_QUANT_H
#define SMALLMIND_QUANT_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    SMM_F32 = 0, SMM_F16 = 1, SMM_Q4_0 = 2, SMM_Q4_1 = 3, SMM_Q5_0 = 6, SMM_Q5_1 = 7,
    SMM_Q8_0 = 8, SMM_Q8_1 = 9, SMM_Q2_K = 10, SMM_Q3_K = 11, SMM_Q4_K = 12, SMM_Q5_K = 13,
    SMM_Q6_K = 14, SMM_Q8_K = 15, SMM_BF16 = 30
};

/* Elements per block of a supported type; 0 for a type this module cannot multiply. */
static int smm_block_elems(int type)
{
    switch (type) {
    case SMM_F32: case SMM_F16: case SMM_BF16: return 1;
    case SMM_Q4_0: case SMM_Q4_1: case SMM_Q5_0: case SMM_Q5_1: case SMM_Q8_0: return 32;
    case SMM_Q4_K: case SMM_Q5_K: case SMM_Q6_K: case SMM_Q8_K: return 256;
    default: return 0;
    }
}

static int smm_block_bytes(int type)
{
    switch (type) {
    case SMM_F32: return 4;
    case SMM_F16: case SMM_BF16: return 2;
    case SMM_Q4_0: return 18;
    case SMM_Q4_1: return 20;
    case SMM_Q5_0: return 22;
    case SMM_Q5_1: return 24;
    case SMM_Q8_0: return 34;
    case SMM_Q4_K: return 144;
    case SMM_Q5_K: return 176;
    case SMM_Q6_K: return 210;
    case SMM_Q8_K: return 292;
    default: return 0;
    }
}

/* Families: how the activations are prepared for a weight type. */
#define SMM_FAMILY_FLOAT 0   /* f32/f16/bf16 weights: float FMA, activations used as is */
#define SMM_FAMILY_Q32 1     /* 32-element blocks: activations quantised per 32 (Q8_0-like) */
#define SMM_FAMILY_QK 2      /* 256-element K blocks: activations quantised per 256 (Q8_K-like) */

/* A weight repacked at load into 8-row interleaved groups (_matmul_r8.h) carries its GGML
 * type plus SMM_R8 in the kernels' `type`: only the kernels look at the layout. */
#define SMM_R8 0x100

static inline int smm_family(int type)
{
    int be = smm_block_elems(type & ~SMM_R8);
    return be == 1 ? SMM_FAMILY_FLOAT : (be == 32 ? SMM_FAMILY_Q32 : SMM_FAMILY_QK);
}

static inline uint16_t smm_ld16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t smm_ld32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t smm_ld64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline float smm_f16(const uint8_t* p) { return _cvtsh_ss(smm_ld16(p)); }
static inline float smm_bf16_bits(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------------------------------
 * Dequantisation of one row (embedding lookups, tests). Scalar: it runs once per token
 * on a few hundred elements, and being obviously right matters more here.
 * ---------------------------------------------------------------------------------- */

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block. */
static inline void smm_k_scale_min(const uint8_t* sc, int j, int* scale, int* min)
{
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

static void smm_dequant_q6_k(const uint8_t* b, float* out)
{
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = (const int8_t*)(b + 192);
    float d = smm_f16(b + 208);
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            int q0 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q1 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            out[l] = d * sc[l / 16] * q0;
            out[l + 32] = d * sc[2 + l / 16] * q1;
            out[l + 64] = d * sc[4 + l / 16] * q2;
            out[l + 96] = d * sc[6 + l / 16] * q3;
        }
        ql += 64;
        qh += 32;
        sc += 8;
        out += 128;
    }
}

/* Row `data` (row_bytes of `type` blocks) -> out[0:cols] as float32. */
static void smm_dequant_row(int type, const uint8_t* data, ptrdiff_t cols, float* out)
{
    ptrdiff_t nb = cols / smm_block_elems(type);
    const uint8_t* b = data;
    switch (type) {
    case SMM_F32:
        memcpy(out, data, (size_t)cols * 4);
        return;
    case SMM_F16: {
        ptrdiff_t i = 0;
        for (; i + 8 <= cols; i += 8)
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(data + 2 * i))));
        for (; i < cols; i++) out[i] = smm_f16(data + 2 * i);
        return;
    }
    case SMM_BF16:
        for (ptrdiff_t i = 0; i < cols; i++) out[i] = smm_bf16_bits(smm_ld16(data + 2 * i));
        return;
    case SMM_Q4_0: case SMM_Q4_1:
        for (ptrdiff_t i = 0; i < nb; i++, out += 32) {
            float d = smm_f16(b);
            float m = type == SMM_Q4_1 ? smm_f16(b + 2) : -8.0f * d;
            const uint8_t* qs = b + (type == SMM_Q4_1 ? 4 : 2);
            for (int j = 0; j < 16; j++) {
                out[j] = d * (qs[j] & 15) + m;
                out[j + 16] = d * (qs[j] >> 4) + m;
            }
            b += type == SMM_Q4_1 ? 20 : 18;
        }
        return;
    case SMM_Q5_0: case SMM_Q5_1:
        for (ptrdiff_t i = 0; i < nb; i++, out += 32) {
            int has_min = type == SMM_Q5_1;
            float d = smm_f16(b);
            float m = has_min ? smm_f16(b + 2) : -16.0f * d;
            uint32_t qh = smm_ld32(b + (has_min ? 4 : 2));
            const uint8_t* qs = b + (has_min ? 8 : 6);
            for (int j = 0; j < 16; j++) {
                int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
                int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                out[j] = d * lo + m;
                out[j + 16] = d * hi + m;
            }
            b += has_min ? 24 : 22;
        }
        return;
    case SMM_Q8_0:
        for (ptrdiff_t i = 0; i < nb; i++, out += 32, b += 34) {
            float d = smm_f16(b);
            for (int j = 0; j < 32; j++) out[j] = d * (int8_t)b[2 + j];
        }
        return;
    case SMM_Q4_K: case SMM_Q5_K:
        for (ptrdiff_t i = 0; i < nb; i++) {
            int five = type == SMM_Q5_K;
            float d = smm_f16(b), dmin = smm_f16(b + 2);
            const uint8_t* sc = b + 4;
            const uint8_t* qh = b + 16;
            const uint8_t* qs = b + (five ? 48 : 16);
            for (int c = 0; c < 4; c++, out += 64) {
                int s0, m0, s1, m1;
                smm_k_scale_min(sc, 2 * c, &s0, &m0);
                smm_k_scale_min(sc, 2 * c + 1, &s1, &m1);
                for (int l = 0; l < 32; l++) {
                    int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
                    if (five) {
                        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    out[l] = d * s0 * lo - dmin * m0;
                    out[l + 32] = d * s1 * hi - dmin * m1;
                }
            }
            b += five ? 176 : 144;
        }
        return;
    case SMM_Q6_K:
        for (ptrdiff_t i = 0; i < nb; i++, out += 256, b += 210) smm_dequant_q6_k(b, out);
        return;
    case SMM_Q8_K:
        for (ptrdiff_t i = 0; i < nb; i++, out += 256, b += 292) {
            float d;
            memcpy(&d, b, 4);
            for (int j = 0; j < 256; j++) out[j] = d * (int8_t)b[4 + j];
        }
        return;
    }
}

/* ------------------------------------------------------------------------------------
 * Activations quantised on the fly.
 *
 * Q32 layout of one activation row (blocks of 32, nb = cols/32), at a 64-byte aligned
 * address: int8 q[Q] | int32 corr[Q/4] | float d[nb] | float s[nb] | int32 sumq[nb],
 * Q = 64*ceil(nb/2), with x ~= d*q, s = d*sum(q), sumq = sum(q). Per block d = amax/127
 * and q = rint(x*127/amax), so |q| <= 127 (which the u8 x s8 pair sums of maddubs rely
 * on) and the rounding error is at most amax/254 per element. The codes are in element
 * order for the AVX2 kernels; for the AVX-512 ones (`interleave`) each pair of blocks is
 * stored as 4-byte groups alternating between the two blocks (b0[0:4] b1[0:4] b0[4:8]
 * b1[4:8] ...), so that the int32 lanes of vpdpbusd alternate between the blocks and
 * their two scales can be applied with a single 64-bit broadcast. An odd last block is
 * paired with zeros. With `code_offset` (the AVX-512 kernels store Q4_0/Q5_0/Q8_0 codes
 * as unsigned q + offset), corr[g] = -offset * (sum of the 4 codes of group g): vpdpbusd
 * starting from corr yields sum((q_w + offset) x) - offset sum(x) = sum(q_w x) exactly.
 *
 * QK layout (blocks of 256, nbk = cols/256): int8 q[cols] | float d[nbk] |
 * int16 bsum[cols/16] (sums of q over each 16 elements, for K-quant mins and offsets) |
 * int16 bsp[cols/32] (sums over each 32 elements: the sub-blocks of Q4_K/Q5_K) |
 * float xs[cols/32] (d * bsp: the AVX2 kernels apply a block's 8 mins with one FMA).
 * ---------------------------------------------------------------------------------- */

static inline ptrdiff_t smm_round64(ptrdiff_t v) { return (v + 63) & ~(ptrdiff_t)63; }

/* Bytes of codes in a Q32 activation row (whole pairs of blocks). */
static inline ptrdiff_t smm_act32_qbytes(ptrdiff_t cols) { return (cols / 32 + 1) / 2 * 64; }

static inline ptrdiff_t smm_act_stride(int family, ptrdiff_t cols)
{
    if (family == SMM_FAMILY_Q32) return smm_round64(2 * smm_act32_qbytes(cols) + 12 * (cols / 32));
    if (family == SMM_FAMILY_QK) return smm_round64(cols + 4 * (cols / 256) + 2 * (cols / 16) + 6 * (cols / 32));
    return 0;
}

static inline float smm_hmax8(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int smm_hsum8_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* 32 floats times `scale`, rounded to nearest-even, to 32 int8 (in element order).
 * Also returns the 8-lane int32 partial sums of the result. */
static inline __m256i smm_round_to_i8x32(const float* x, __m256 scale, __m256i* sums)
{
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), scale));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), scale));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), scale));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), scale));
    *sums = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    /* packs work within 128-bit lanes; the final permute restores element order */
    __m256i p01 = _mm256_packs_epi32(i0, i1);
    __m256i p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float smm_absmax32(const float* x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 16)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 24)));
    return smm_hmax8(m);
}

/* -offset * (sum of each 4 int8 codes) for 32 codes: 8 int32 corrections. */
static inline __m256i smm_group_corr(__m256i codes, int log2_offset)
{
    __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), codes), _mm256_set1_epi16(1));
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_sll_epi32(sums, _mm_cvtsi32_si128(log2_offset)));
}

/* Interleaves the codes of blocks a and b (see the layout above) into dst[0:64], and
 * their offset corrections into corr[0:16] when log2_offset > 0. */
static inline void smm_store_pair(__m256i a, __m256i b, int8_t* dst, int32_t* corr, int log2_offset)
{
    __m256i lo = _mm256_unpacklo_epi32(a, b), hi = _mm256_unpackhi_epi32(a, b);
    __m256i p0 = _mm256_permute2x128_si256(lo, hi, 0x20), p1 = _mm256_permute2x128_si256(lo, hi, 0x31);
    _mm256_storeu_si256((__m256i*)dst, p0);
    _mm256_storeu_si256((__m256i*)(dst + 32), p1);
    if (log2_offset > 0) {
        _mm256_storeu_si256((__m256i*)corr, smm_group_corr(p0, log2_offset));
        _mm256_storeu_si256((__m256i*)(corr + 8), smm_group_corr(p1, log2_offset));
    }
}

/* log2_offset: 0, or log2 of the code offset to correct for (AVX-512 Q4_0/Q5_0/Q8_0). */
static void smm_quantize_act_q32(const float* x, ptrdiff_t cols, uint8_t* dst, int interleave, int log2_offset)
{
    ptrdiff_t nb = cols / 32;
    int8_t* q = (int8_t*)dst;
    int32_t* corr = (int32_t*)(dst + smm_act32_qbytes(cols));
    float* dd = (float*)(dst + 2 * smm_act32_qbytes(cols));
    float* ss = dd + nb;
    int32_t* sq = (int32_t*)(ss + nb);
    __m256i prev = _mm256_setzero_si256();
    for (ptrdiff_t b = 0; b < nb; b++) {
        float amax = smm_absmax32(x + 32 * b);
        float d = amax / 127.0f;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m256i sums;
        __m256i v = smm_round_to_i8x32(x + 32 * b, _mm256_set1_ps(id), &sums);
        if (!interleave) {
            _mm256_storeu_si256((__m256i*)(q + 32 * b), v);
        } else if (b & 1) {
            smm_store_pair(prev, v, q + 32 * (b - 1), corr + 8 * (b - 1), log2_offset);
        } else {
            prev = v;
        }
        int s = smm_hsum8_epi32(sums);
        dd[b] = d;
        ss[b] = d * (float)s;
        sq[b] = s;
    }
    if (nb & 1) { /* pair the last block with zeros (interleaved), or just zero-pad */
        __m256i z = _mm256_setzero_si256();
        if (interleave) {
            smm_store_pair(prev, z, q + 32 * (nb - 1), corr + 8 * (nb - 1), log2_offset);
        } else {
            _mm256_storeu_si256((__m256i*)(q + 32 * nb), z);
        }
    }
}

static void smm_quantize_act_qk(const float* x, ptrdiff_t cols, uint8_t* dst)
{
    ptrdiff_t nb = cols / 256;
    int8_t* q = (int8_t*)dst;
    float* dd = (float*)(dst + cols);
    int16_t* bsum = (int16_t*)(dd + nb);
    int16_t* bsp = bsum + cols / 16;
    float* xs = (float*)(bsp + cols / 32);
    for (ptrdiff_t b = 0; b < nb; b++) {
        const float* xb = x + 256 * b;
        float amax = 0.0f;
        for (int j = 0; j < 8; j++) {
            float a = smm_absmax32(xb + 32 * j);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int j = 0; j < 8; j++) {
            __m256i sums;
            __m256i v = smm_round_to_i8x32(xb + 32 * j, _mm256_set1_ps(id), &sums);
            _mm256_storeu_si256((__m256i*)(q + 256 * b + 32 * j), v);
            /* sums of each 16 bytes: sign-extend to int16 and add pairs down */
            __m256i w = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
            /* w: int32 lanes 0-3 cover elements 0-15, lanes 4-7 elements 16-31 */
            __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
            lo = _mm_hadd_epi32(lo, hi);           /* (0-7), (8-15), (16-23), (24-31) */
            lo = _mm_hadd_epi32(lo, lo);           /* (0-15), (16-31), ... */
            bsum[16 * b + 2 * j] = (int16_t)_mm_cvtsi128_si32(lo);
            bsum[16 * b + 2 * j + 1] = (int16_t)_mm_extract_epi32(lo, 1);
            bsp[8 * b + j] = (int16_t)(bsum[16 * b + 2 * j] + bsum[16 * b + 2 * j + 1]);
            xs[8 * b + j] = d * (float)bsp[8 * b + j];
        }
        dd[b] = d;
    }
}

#endif
