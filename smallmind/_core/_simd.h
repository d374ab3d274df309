/*
 * The SIMD building blocks every float kernel shares: tail masks, horizontal sums and
 * maxima, the one vectorised exp, and a reciprocal without the divider.
 *
 * 8-lane (__m256) versions need only AVX2 + FMA, which setup.py enables for every
 * extension (-mavx2 -mfma) and smallmind._cpu checks at import. The 16-lane (__m512)
 * versions are compiled through a target attribute (SM_AVX512) and called only when
 * _simd_dispatch.h's smm_isa() says the CPU has AVX-512, so one binary runs everywhere.
 * The activations built from these live in _activations.h, the attention and sampling
 * inner loops in _attention.h and _sampling.h.
 *
 * The exp polynomial was fitted for this file (weighted least squares iterated towards
 * minimax, in float64 against mpmath) and then rounded to float32.
 */
#ifndef SMALLMIND_SIMD_H
#define SMALLMIND_SIMD_H

#include <immintrin.h>
#include <math.h>
#include <stddef.h>

#define SM_INLINE static inline
/* Functions using 512-bit vectors; callers check smm_isa() first. */
#define SM_AVX512 __attribute__((target("avx512f")))

/* Lanes [0, count) set, the rest clear: the mask for a ragged tail of count < 8 floats
 * (count >= 8 gives every lane). */
SM_INLINE __m256i sm_tail_mask(ptrdiff_t count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(count < 8 ? count : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

SM_AVX512 SM_INLINE __mmask16 sm512_tail_mask(ptrdiff_t count)
{
    return (__mmask16)((1u << (count < 16 ? count : 16)) - 1u);
}

/* Horizontal sum and max of the 8 lanes. */
SM_INLINE float sm_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

SM_INLINE float sm_hmax(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 8 horizontal sums of a0..a7 as one vector [sum a0, ..., sum a7]: three rounds of
 * hadd instead of eight separate reductions. */
SM_INLINE __m256 sm_hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                          __m256 a4, __m256 a5, __m256 a6, __m256 a7)
{
    __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    /* lo = [a0..a3 over lanes 0-3 | a0..a3 over lanes 4-7], hi likewise for a4..a7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

/*
 * exp(x) for x in [-87.33, 88.3] (callers clamp, or use sm_exp), relative error ~1 ulp,
 * exactly 1 at x = 0; NaN in gives NaN out.
 *
 * x = n ln2 + r with |r| <= ln2/2: n comes from adding 1.5*2^23 + 127, which rounds
 * x log2(e) to an integer and leaves n + 127 in the low mantissa bits, so a shift puts
 * it into an exponent field to make 2^n. ln2 is split in two (Cody-Waite) and FMA keeps
 * r exact enough; e^r = 1 + r + r^2 P(r) with a degree-4 P (fit error 3e-9).
 *
 * Written once for both vector widths: V is the vector type, P the intrinsic prefix
 * (_mm256 / _mm512) and W the width in bits, which the integer casts are named after.
 */
#define SM_DEFINE_EXP_CORE(NAME, ATTR, V, P, W)                                             \
    ATTR SM_INLINE V NAME(V x)                                                              \
    {                                                                                       \
        const V shifter = P##_set1_ps(12582912.0f + 127.0f);                                \
        V t = P##_fmadd_ps(x, P##_set1_ps(1.44269504088896341f), shifter);                  \
        V n = P##_sub_ps(t, shifter);                                                       \
        V r = P##_fnmadd_ps(n, P##_set1_ps(0.693145751953125f), x);                         \
        r = P##_fnmadd_ps(n, P##_set1_ps(1.42860682030941723e-6f), r);                      \
        V p = P##_set1_ps(1.381459762e-03f);                                                \
        p = P##_fmadd_ps(p, r, P##_set1_ps(8.368716575e-03f));                              \
        p = P##_fmadd_ps(p, r, P##_set1_ps(4.166838899e-02f));                              \
        p = P##_fmadd_ps(p, r, P##_set1_ps(1.666652113e-01f));                              \
        p = P##_fmadd_ps(p, r, P##_set1_ps(4.999999404e-01f));                              \
        p = P##_fmadd_ps(p, P##_mul_ps(r, r), P##_add_ps(r, P##_set1_ps(1.0f)));            \
        return P##_mul_ps(p, P##_castsi##W##_ps(P##_slli_epi32(P##_castps_si##W(t), 23)));  \
    }

SM_DEFINE_EXP_CORE(sm_exp_core, , __m256, _mm256, 256)
SM_DEFINE_EXP_CORE(sm512_exp_core, SM_AVX512, __m512, _mm512, 512)

/* Results below the smallest normal float are flushed to exactly 0 from here down. */
#define SM_EXP_LOWEST (-87.33f)

/*
 * exp(x) for any x, the one every kernel calls: exactly 1 at 0, exactly 0 below
 * SM_EXP_LOWEST (-inf included, so a masked score or a banned token weighs nothing and
 * no denormal is ever produced), saturating at e^88 above 88, NaN for NaN (max and min
 * return their second operand when either is NaN, and that is x).
 */
SM_INLINE __m256 sm_exp(__m256 x)
{
    const __m256 lowest = _mm256_set1_ps(SM_EXP_LOWEST);
    __m256 e = sm_exp_core(_mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lowest, x)));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lowest, _CMP_LT_OQ), e);
}

SM_AVX512 SM_INLINE __m512 sm512_exp(__m512 x)
{
    const __m512 lowest = _mm512_set1_ps(SM_EXP_LOWEST);
    __m512 e = sm512_exp_core(_mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(lowest, x)));
    return _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(x, lowest, _CMP_LT_OQ), e);
}

/* sm_exp of one float, bit-identical to the vector lanes (no libm in the hot loops). */
SM_INLINE float sm_exp_ss(float x)
{
    return _mm256_cvtss_f32(sm_exp(_mm256_set1_ps(x)));
}

/*
 * Cheap exp for x <= 0, for the "fast" GELU only: e^r = 1 + r + r^2 (c0 + c1 r),
 * relative error 1.2e-4, one ln2 constant; x is clamped at -87 so the result is a
 * normal float.
 */
#define SM_DEFINE_EXP_FAST_NONPOSITIVE(NAME, ATTR, V, P, W)                                 \
    ATTR SM_INLINE V NAME(V x)                                                              \
    {                                                                                       \
        const V shifter = P##_set1_ps(12582912.0f + 127.0f);                                \
        x = P##_max_ps(P##_set1_ps(-87.0f), x);                                             \
        V t = P##_fmadd_ps(x, P##_set1_ps(1.44269504088896341f), shifter);                  \
        V r = P##_fnmadd_ps(P##_sub_ps(t, shifter), P##_set1_ps(0.693147180559945f), x);    \
        V p = P##_fmadd_ps(P##_set1_ps(1.666281074e-01f), r, P##_set1_ps(5.039418340e-01f)); \
        p = P##_fmadd_ps(p, P##_mul_ps(r, r), P##_add_ps(r, P##_set1_ps(1.0f)));            \
        return P##_mul_ps(p, P##_castsi##W##_ps(P##_slli_epi32(P##_castps_si##W(t), 23)));  \
    }

SM_DEFINE_EXP_FAST_NONPOSITIVE(sm_exp_fast_nonpositive, , __m256, _mm256, 256)
SM_DEFINE_EXP_FAST_NONPOSITIVE(sm512_exp_fast_nonpositive, SM_AVX512, __m512, _mm512, 512)

/* 1 / d from the 12-bit approximate reciprocal and two Newton steps, which keeps
 * the divider (5+ cycles a vector) out of the hot loops. Each step is written
 * r + r (1 - d r), whose correction term is exact with FMA; the two-step form
 * r (2 - d r) stalls at 1 - 2^-24 for d = 1, which made gelu(x) = x - 1 ulp. */
SM_INLINE __m256 sm_recip(__m256 d)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 r = _mm256_rcp_ps(d);
    r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
}

/* The same from the 14-bit rcp14: one Newton step is enough. */
SM_AVX512 SM_INLINE __m512 sm512_recip(__m512 d)
{
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

#endif /* SMALLMIND_SIMD_H */
