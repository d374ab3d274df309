/*
 * AVX-512 kernels, compiled for that target per function (SMM_AVX512_TARGET) and only
 * called after smm_isa() confirmed the CPU has AVX-512 F/BW/VL/DQ/VNNI/VBMI and GFNI.
 */
#ifndef SMALLMIND_MATMUL_AVX512_H
#define SMALLMIND_MATMUL_AVX512_H

#include "_simd_dispatch.h"
#include "_quant.h"

#define SMM_INLINE512 static inline __attribute__((always_inline)) SMM_AVX512_TARGET

/* Lanes [0, count) of 16, count clamped to [0, 16]. */
SMM_INLINE512 __mmask16 smm_mask16(ptrdiff_t count)
{
    if (count >= 16) return (__mmask16)0xFFFF;
    if (count <= 0) return 0;
    return (__mmask16)((1u << count) - 1);
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
