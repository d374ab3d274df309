/*
 * Inline AVX2/FMA helpers for the elementwise and normalisation kernels.
 *
 * The first part works on one __m256 (8 float32 lanes) at a time with AVX2 + FMA only,
 * which setup.py enables for every extension (-mavx2 -mfma) and smallmind._cpu checks
 * at import; the loops that walk arrays live in the .pyx files. The second part holds
 * AVX-512F versions of the activations, whole array loops included, compiled through
 * a target attribute and used only when the CPU reports AVX-512F at run time.
 *
 * Special values: every activation maps +inf to +inf, -inf to 0 and NaN to NaN.
 *
 * The polynomial coefficients were fitted for this file (weighted least squares
 * iterated towards minimax, in float64 against mpmath) and then rounded to float32.
 */
#ifndef SMALLMIND_SIMD_H
#define SMALLMIND_SIMD_H

#include <immintrin.h>
#include <math.h>
#include <stddef.h>

/* Lanes [0, count) set, the rest clear: the mask for a ragged tail of count < 8 floats. */
static inline __m256i sm_tail_mask(ptrdiff_t count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Horizontal sum and max of the 8 lanes. */
static inline float sm_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float sm_hmax(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/*
 * exp(x) for x in [-87.3, 88.3] (callers clamp; NaN in gives NaN out), relative
 * error ~1 ulp.
 *
 * x = n ln2 + r with |r| <= ln2/2: n comes from adding 1.5*2^23 + 127, which rounds
 * x log2(e) to an integer and leaves n + 127 in the low mantissa bits, so a shift puts
 * it into an exponent field to make 2^n. ln2 is split in two (Cody-Waite) and FMA keeps
 * r exact enough; e^r = 1 + r + r^2 P(r) with a degree-4 P (fit error 3e-9).
 */
static inline __m256 sm_exp_core(__m256 x)
{
    const __m256 shifter = _mm256_set1_ps(12582912.0f + 127.0f);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shifter);
    __m256 n = _mm256_sub_ps(t, shifter);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);
    __m256 p = _mm256_set1_ps(1.381459762e-03f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.368716575e-03f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166838899e-02f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666652113e-01f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.999999404e-01f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256 two_n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
    return _mm256_mul_ps(p, two_n);
}

/*
 * exp(x) for x <= 88 (larger x saturate at e^88), flushing results below the
 * smallest normal float (x < -87.33, -inf included) to exactly 0. NaN propagates:
 * max/min return their second operand when either is NaN, and that is x.
 */
static inline __m256 sm_exp_flush(__m256 x)
{
    const __m256 lowest = _mm256_set1_ps(-87.33f);
    __m256 e = sm_exp_core(_mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lowest, x)));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lowest, _CMP_LT_OQ), e);
}

/*
 * Cheap exp for x <= 0, for the "fast" GELU: e^r = 1 + r + r^2 (c0 + c1 r), relative
 * error 1.2e-4, one ln2 constant; x is clamped at -87 so the result is a normal float.
 */
static inline __m256 sm_exp_fast_nonpositive(__m256 x)
{
    const __m256 shifter = _mm256_set1_ps(12582912.0f + 127.0f);
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shifter);
    __m256 r = _mm256_fnmadd_ps(_mm256_sub_ps(t, shifter), _mm256_set1_ps(0.693147180559945f), x);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.666281074e-01f), r, _mm256_set1_ps(5.039418340e-01f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

/* 1 / d from the 12-bit approximate reciprocal and two Newton steps, which keeps
 * the divider (5+ cycles a vector) out of the hot loops. Each step is written
 * r + r (1 - d r), whose correction term is exact with FMA; the two-step form
 * r (2 - d r) stalls at 1 - 2^-24 for d = 1, which made gelu(x) = x - 1 ulp. */
static inline __m256 sm_recip(__m256 d)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 r = _mm256_rcp_ps(d);
    r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, one), r);
}

/*
 * x * sigmoid(s) = x / (1 + exp(-s)), given minus_s = -s and the bound `cut`: where
 * s < -cut the result (|x| e^-cut at most) is returned as 0, which also gives the
 * limit 0 rather than -inf * 0 = NaN for x = -inf. minus_s is clamped to +-cut for
 * exp, so cut must be <= 87.3. NaN in x propagates through the final multiply.
 * Writing 1 + tanh(u) as 2 sigmoid(2u) avoids the cancellation of 1 + tanh for x < 0.
 */
static inline __m256 sm_x_sigmoid(__m256 x, __m256 minus_s, float cut)
{
    const __m256 vcut = _mm256_set1_ps(cut);
    __m256 clamped = _mm256_min_ps(vcut, _mm256_max_ps(_mm256_set1_ps(-cut), minus_s));
    __m256 e = sm_exp_core(clamped);
    __m256 y = _mm256_mul_ps(x, sm_recip(_mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    return _mm256_andnot_ps(_mm256_cmp_ps(minus_s, vcut, _CMP_GT_OQ), y);
}

/*
 * GELU, tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed
 * as x sigmoid(2u). Cut at |2u| = 87: gelu(x) for 2u < -87 (x < -10) is below 1e-37.
 */
static inline __m256 sm_gelu_tanh(__m256 x)
{
    const __m256 c1 = _mm256_set1_ps(-1.5957691216057308f);   /* -2 sqrt(2/pi) */
    const __m256 c3 = _mm256_set1_ps(-0.071354816272287f);    /* -2 sqrt(2/pi) 0.044715 */
    __m256 minus_two_u = _mm256_mul_ps(x, _mm256_fmadd_ps(c3, _mm256_mul_ps(x, x), c1));
    return sm_x_sigmoid(x, minus_two_u, 87.0f);
}

/* SiLU: x * sigmoid(x). */
static inline __m256 sm_silu(__m256 x)
{
    return sm_x_sigmoid(x, _mm256_sub_ps(_mm256_setzero_ps(), x), 87.0f);
}

/*
 * Phi(x) = 0.5 erfc(-x / sqrt 2), the normal CDF, so that GELU(x) = x Phi(x) exactly.
 * With z = |x| / sqrt 2 and t = 1 / (1 + z/2): erfc(z) = t exp(-z^2 + P(t)), where
 * the degree-9 P was fitted for z in [0, 10] (relative error of erfc 5e-8 in float64,
 * ~3e-7 after float32 rounding). Using erfc for both signs keeps the relative error
 * small in the tail (x << 0), where 1 + erf(.) would cancel.
 */
static inline __m256 sm_normal_cdf(__m256 x)
{
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    /* Past z = 14 the tail underflows anyway; capping z keeps rcp away from inf
     * (rcp(inf) = 0 would turn the Newton step into inf * 0). min keeps NaN. */
    __m256 z = _mm256_min_ps(_mm256_set1_ps(14.0f),
                             _mm256_mul_ps(_mm256_andnot_ps(sign_bit, x), _mm256_set1_ps(0.70710678118654752f)));
    __m256 t = sm_recip(_mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.421949099e-01f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-6.660666333e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.122409183e+00f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-6.512591801e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.167788777e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.019153590e-02f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.835856178e-02f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(3.878994360e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(9.984925487e-01f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.265441440e+00f));
    /* 0.5 erfc(z); z = inf gives exp(-inf) = 0, so tail = 0, as it should. */
    __m256 tail = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), t),
                                sm_exp_flush(_mm256_fnmadd_ps(z, z, p)));
    __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), tail), tail, negative);
}

/*
 * "fast" GELU: the tanh form with the cheap exp and the approximate reciprocal
 * (relative error 3.7e-4) instead of a divide. With e = exp(-|2u|) <= 1 and
 * r ~ 1 / (1 + e): sigmoid(|2u|) = 1 - e r and sigmoid(-|2u|) = e r; writing the
 * positive side as 1 - e r keeps the rcp error proportional to e, so the error never
 * grows like |x|. The tanh formula itself is 4.7e-4 away from the erf GELU.
 */
static inline __m256 sm_gelu_fast(__m256 x)
{
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 two_u = _mm256_mul_ps(x, _mm256_fmadd_ps(_mm256_set1_ps(0.071354816272287f), x2,
                                                    _mm256_set1_ps(1.5957691216057308f)));
    __m256 e = sm_exp_fast_nonpositive(_mm256_or_ps(two_u, sign_bit));      /* exp(-|2u|) */
    __m256 er = _mm256_mul_ps(e, _mm256_rcp_ps(_mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 y = _mm256_mul_ps(x, _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), er), er, negative));
    /* Below -11 the true value is < 1e-37; this also turns -inf * tiny = -inf into 0. */
    __m256 very_negative = _mm256_cmp_ps(x, _mm256_set1_ps(-11.0f), _CMP_LT_OQ);
    return _mm256_andnot_ps(very_negative, y);
}

/* GELU, exact erf form: x Phi(x). x = -inf gives -inf * 0 = NaN, hence the fix-up. */
static inline __m256 sm_gelu_erf(__m256 x)
{
    __m256 y = _mm256_mul_ps(x, sm_normal_cdf(x));
    __m256 very_negative = _mm256_cmp_ps(x, _mm256_set1_ps(-20.0f), _CMP_LT_OQ);
    return _mm256_andnot_ps(very_negative, y);
}

/* ---------------------------------------------------------------------------------
 * AVX-512 versions of the activations (the three GELUs, GeGLU, SwiGLU).
 *
 * The package only requires AVX2, so these are compiled for AVX-512F through a
 * target attribute and called only when sm_cpu_has_avx512() says so (the .pyx
 * modules decide once, at import). Same math as the 8-lane versions above, with
 * rcp14 (14-bit) plus one Newton step and the lane masks of AVX-512 for the tail.
 * Twice the lanes per instruction: ~1.5x the AVX2 throughput on 1M floats.
 * --------------------------------------------------------------------------------- */
#if defined(__GNUC__) && defined(__x86_64__)
#define SM_HAVE_AVX512_PATH 1
#define SM_AVX512 __attribute__((target("avx512f")))

static inline int sm_cpu_has_avx512(void)
{
    /* GCC's check also confirms the OS saves the AVX-512 registers (XCR0). */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

SM_AVX512 static inline __m512 sm512_exp_core(__m512 x)
{
    const __m512 shifter = _mm512_set1_ps(12582912.0f + 127.0f);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shifter);
    __m512 n = _mm512_sub_ps(t, shifter);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
    __m512 p = _mm512_set1_ps(1.381459762e-03f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.368716575e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166838899e-02f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666652113e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999999404e-01f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23)));
}

/* See sm_x_sigmoid. */
SM_AVX512 static inline __m512 sm512_x_sigmoid(__m512 x, __m512 minus_s, float cut)
{
    const __m512 vcut = _mm512_set1_ps(cut);
    __m512 clamped = _mm512_min_ps(vcut, _mm512_max_ps(_mm512_set1_ps(-cut), minus_s));
    __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), sm512_exp_core(clamped));
    __m512 r = _mm512_rcp14_ps(d);           /* 14 bits; one Newton step as in sm_recip */
    r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
    __mmask16 cut_off = _mm512_cmp_ps_mask(minus_s, vcut, _CMP_GT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~cut_off, x, r);
}

SM_AVX512 static inline __m512 sm512_gelu_tanh(__m512 x)
{
    __m512 minus_two_u = _mm512_mul_ps(x, _mm512_fmadd_ps(_mm512_set1_ps(-0.071354816272287f),
                                                          _mm512_mul_ps(x, x),
                                                          _mm512_set1_ps(-1.5957691216057308f)));
    return sm512_x_sigmoid(x, minus_two_u, 87.0f);
}

SM_AVX512 static inline __m512 sm512_silu(__m512 x)
{
    return sm512_x_sigmoid(x, _mm512_sub_ps(_mm512_setzero_ps(), x), 87.0f);
}

/* exp(x) for x <= 88 with results below FLT_MIN flushed to 0; see sm_exp_flush. */
SM_AVX512 static inline __m512 sm512_exp_flush(__m512 x)
{
    const __m512 lowest = _mm512_set1_ps(-87.33f);
    __m512 e = sm512_exp_core(_mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(lowest, x)));
    return _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(x, lowest, _CMP_LT_OQ), e);
}

/* See sm_normal_cdf and sm_gelu_erf. */
SM_AVX512 static inline __m512 sm512_gelu_erf(__m512 x)
{
    __m512 z = _mm512_min_ps(_mm512_set1_ps(14.0f),
                             _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f)));
    __m512 d = _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f));
    __m512 t = _mm512_rcp14_ps(d);
    t = _mm512_fmadd_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(1.0f)), t);
    __m512 p = _mm512_set1_ps(1.421949099e-01f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-6.660666333e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.122409183e+00f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-6.512591801e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.167788777e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(2.019153590e-02f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(2.835856178e-02f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(3.878994360e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(9.984925487e-01f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.265441440e+00f));
    __m512 tail = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), t),
                                sm512_exp_flush(_mm512_fnmadd_ps(z, z, p)));
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 cdf = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), tail), negative, tail);
    __mmask16 very_negative = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-20.0f), _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~very_negative, x, cdf);
}

/* See sm_gelu_fast; rcp14 is accurate enough here without a Newton step. */
SM_AVX512 static inline __m512 sm512_gelu_fast(__m512 x)
{
    const __m512 shifter = _mm512_set1_ps(12582912.0f + 127.0f);
    __m512 minus_abs_two_u = _mm512_abs_ps(_mm512_mul_ps(x, _mm512_fmadd_ps(
        _mm512_set1_ps(0.071354816272287f), _mm512_mul_ps(x, x), _mm512_set1_ps(1.5957691216057308f))));
    minus_abs_two_u = _mm512_max_ps(_mm512_set1_ps(-87.0f), _mm512_sub_ps(_mm512_setzero_ps(), minus_abs_two_u));
    __m512 t = _mm512_fmadd_ps(minus_abs_two_u, _mm512_set1_ps(1.44269504088896341f), shifter);
    __m512 r = _mm512_fnmadd_ps(_mm512_sub_ps(t, shifter), _mm512_set1_ps(0.693147180559945f), minus_abs_two_u);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.666281074e-01f), r, _mm512_set1_ps(5.039418340e-01f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512 e = _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23)));
    __m512 er = _mm512_mul_ps(e, _mm512_rcp14_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 sig = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), er), negative, er);
    __mmask16 very_negative = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-11.0f), _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~very_negative, x, sig);
}

SM_AVX512 static inline __mmask16 sm512_tail_mask(ptrdiff_t count)
{
    return (__mmask16)((1u << count) - 1u);
}

/* out[i] = fn(x[i]) over an array, two vectors a step, the tail under a lane mask. */
#define SM512_UNARY_ARRAY(name, fn)                                                    \
    SM_AVX512 static void name(const float* x, float* out, ptrdiff_t n)                 \
    {                                                                                   \
        ptrdiff_t i = 0;                                                                \
        for (; i + 32 <= n; i += 32) {                                                  \
            _mm512_storeu_ps(out + i, fn(_mm512_loadu_ps(x + i)));                      \
            _mm512_storeu_ps(out + i + 16, fn(_mm512_loadu_ps(x + i + 16)));            \
        }                                                                               \
        for (; i < n; i += 16) {                                                        \
            __mmask16 m = sm512_tail_mask(n - i < 16 ? n - i : 16);                     \
            _mm512_mask_storeu_ps(out + i, m, fn(_mm512_maskz_loadu_ps(m, x + i)));     \
        }                                                                               \
    }

SM512_UNARY_ARRAY(sm512_gelu_tanh_array, sm512_gelu_tanh)
SM512_UNARY_ARRAY(sm512_gelu_erf_array, sm512_gelu_erf)
SM512_UNARY_ARRAY(sm512_gelu_fast_array, sm512_gelu_fast)

SM_AVX512 static void sm512_geglu_array(const float* gate, const float* up, float* out, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i += 16) {
        __mmask16 m = sm512_tail_mask(n - i < 16 ? n - i : 16);
        __m512 g = sm512_gelu_tanh(_mm512_maskz_loadu_ps(m, gate + i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

SM_AVX512 static void sm512_swiglu_array(const float* gate, const float* up, float* out, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i += 16) {
        __mmask16 m = sm512_tail_mask(n - i < 16 ? n - i : 16);
        __m512 g = sm512_silu(_mm512_maskz_loadu_ps(m, gate + i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

#else
#define SM_HAVE_AVX512_PATH 0
static inline int sm_cpu_has_avx512(void) { return 0; }
static inline void sm512_gelu_tanh_array(const float* x, float* out, ptrdiff_t n) { (void)x; (void)out; (void)n; }
static inline void sm512_gelu_erf_array(const float* x, float* out, ptrdiff_t n) { (void)x; (void)out; (void)n; }
static inline void sm512_gelu_fast_array(const float* x, float* out, ptrdiff_t n) { (void)x; (void)out; (void)n; }
static inline void sm512_geglu_array(const float* g, const float* u, float* o, ptrdiff_t n) { (void)g; (void)u; (void)o; (void)n; }
static inline void sm512_swiglu_array(const float* g, const float* u, float* o, ptrdiff_t n) { (void)g; (void)u; (void)o; (void)n; }
#endif

#endif /* SMALLMIND_SIMD_H */
