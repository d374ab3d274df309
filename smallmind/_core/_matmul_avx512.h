/*
 * AVX-512 kernels, compiled for that target per function (SMM_AVX512_TARGET) and only
 * called after smm_isa() confirmed the CPU has AVX-512 F/BW/VL/DQ/VNNI/VBMI and GFNI.
 */
#ifndef SMALLMIND_MATMUL_AVX512_H
#define SMALLMIND_MATMUL_AVX512_H

#include "_simd_dispatch.h"
#include "_quant.h"
#include "_matmul_avx2.h"

#define SMM_INLINE512 static inline __attribute__((always_inline)) SMM_AVX512_TARGET

/* Horizontal sums of 4 vectors -> (a, b, c, d). */
/* Tiles of R weight rows (row r, bytes at w) against activation rows 4 at a time, then
 * one at a time; TILE(T, R, C, w, ws, a, as, cols, out) computes one, smm_store_tile stores
 * it. Uses the range function's j, n, ws, act, as, cols and out. */
#define SMM_TILES_OVER_N(TILE, T, R, w, r)                                      \
    do {                                                                        \
        ptrdiff_t t = 0;                                                        \
        for (; t + 4 <= n; t += 4) {                                            \
            TILE(T, R, 4, w, ws, act + t * as, as, cols, out);                  \
            smm_store_tile(j, out, r, t, R, 4);                                 \
        }                                                                       \
        for (; t < n; t++) {                                                    \
            TILE(T, R, 1, w, ws, act + t * as, as, cols, out);                  \
            smm_store_tile(j, out, r, t, R, 1);                                 \
        }                                                                       \
    } while (0)

SMM_INLINE512 __m128 smm_reduce4_512(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 v = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* Lanes [0, count) of 16, count clamped to [0, 16]. */
SMM_INLINE512 __mmask16 smm_mask16(ptrdiff_t count)
{
    if (count >= 16) return (__mmask16)0xFFFF;
    if (count <= 0) return 0;
    return (__mmask16)((1u << count) - 1);
}

/* 16 consecutive weights of a float-type row from element k, as float32 (masked tail). */
SMM_INLINE512 __m512 smm_ldw16(const int type, const uint8_t* row, ptrdiff_t k, __mmask16 m)
{
    if (type == SMM_F32) return _mm512_maskz_loadu_ps(m, (const float*)row + k);
    __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * k);
    if (type == SMM_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/*
 * Float weights, few activation rows: rows [r0, r0+4) (clamped like the AVX2 version)
 * against every activation row, 4 rows x 32 columns per step (8 accumulators).
 */
SMM_INLINE512 void smm_float_rows4_512(const int type, const uint8_t* w, ptrdiff_t wstride, int nvalid,
                                       ptrdiff_t cols, const float* x, ptrdiff_t n, ptrdiff_t ldx, float* y,
                                       ptrdiff_t ldy, const float* bias, ptrdiff_t r0, int accumulate)
{
    const uint8_t* w0 = w;
    const uint8_t* w1 = w + (nvalid > 1 ? 1 : 0) * wstride;
    const uint8_t* w2 = w + (nvalid > 2 ? 2 : 0) * wstride;
    const uint8_t* w3 = w + (nvalid > 3 ? 3 : 0) * wstride;
    const __mmask16 all = 0xFFFF;
    for (ptrdiff_t t = 0; t < n; t++) {
        const float* xt = x + t * ldx;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
        ptrdiff_t k = 0;
        for (; k + 32 <= cols; k += 32) {
            __m512 xa = _mm512_loadu_ps(xt + k), xb = _mm512_loadu_ps(xt + k + 16);
            a0 = _mm512_fmadd_ps(smm_ldw16(type, w0, k, all), xa, a0);
            a1 = _mm512_fmadd_ps(smm_ldw16(type, w1, k, all), xa, a1);
            a2 = _mm512_fmadd_ps(smm_ldw16(type, w2, k, all), xa, a2);
            a3 = _mm512_fmadd_ps(smm_ldw16(type, w3, k, all), xa, a3);
            b0 = _mm512_fmadd_ps(smm_ldw16(type, w0, k + 16, all), xb, b0);
            b1 = _mm512_fmadd_ps(smm_ldw16(type, w1, k + 16, all), xb, b1);
            b2 = _mm512_fmadd_ps(smm_ldw16(type, w2, k + 16, all), xb, b2);
            b3 = _mm512_fmadd_ps(smm_ldw16(type, w3, k + 16, all), xb, b3);
        }
        for (; k < cols; k += 16) {
            const __mmask16 m = smm_mask16(cols - k);
            __m512 xa = _mm512_maskz_loadu_ps(m, xt + k);
            a0 = _mm512_fmadd_ps(smm_ldw16(type, w0, k, m), xa, a0);
            a1 = _mm512_fmadd_ps(smm_ldw16(type, w1, k, m), xa, a1);
            a2 = _mm512_fmadd_ps(smm_ldw16(type, w2, k, m), xa, a2);
            a3 = _mm512_fmadd_ps(smm_ldw16(type, w3, k, m), xa, a3);
        }
        float res[4];
        _mm_storeu_ps(res, smm_reduce4_512(_mm512_add_ps(a0, b0), _mm512_add_ps(a1, b1), _mm512_add_ps(a2, b2),
                                           _mm512_add_ps(a3, b3)));
        float* yt = y + t * ldy + r0;
        for (int r = 0; r < nvalid; r++) smm_store1(yt + r, res[r], bias, r0 + r, accumulate);
    }
}

/*
 * Float GEMM micro-kernel, 8 activation rows x 48 weight rows: 24 zmm accumulators,
 * 3 weight vectors and the broadcast activation fit in the 32 zmm registers, and each
 * k step does 24 FMAs for 3 vector loads + 8 broadcasts. Partial tiles use masks.
 */
SMM_AVX512_TARGET
static void smm_gemm_ukr_avx512(ptrdiff_t kc, const float* Ap, const float* Bp, float* C, ptrdiff_t ldc,
                                int mr, int nr, int load_c, const float* bias)
{
    __m512 c[8][3];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
#pragma GCC unroll 3
        for (int j = 0; j < 3; j++) c[i][j] = _mm512_setzero_ps();
    for (ptrdiff_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16), b2 = _mm512_loadu_ps(Bp + 32);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m512 a = _mm512_set1_ps(Ap[i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
            c[i][2] = _mm512_fmadd_ps(a, b2, c[i][2]);
        }
        Ap += 8;
        Bp += 48;
    }
    __mmask16 m[3];
    __m512 bv[3];
#pragma GCC unroll 3
    for (int j = 0; j < 3; j++) {
        m[j] = smm_mask16(nr - 16 * j);
        bv[j] = bias ? _mm512_maskz_loadu_ps(m[j], bias + 16 * j) : _mm512_setzero_ps();
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        if (i >= mr) break;
#pragma GCC unroll 3
        for (int j = 0; j < 3; j++) {
            __m512 v = _mm512_add_ps(c[i][j], bv[j]);
            if (load_c) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m[j], C + i * ldc + 16 * j));
            _mm512_mask_storeu_ps(C + i * ldc + 16 * j, m[j], v);
        }
    }
}

#endif
