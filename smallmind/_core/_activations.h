/*
 * Activations (SiLU, the three GELUs) on one vector, and the array loops that apply them
 * (GELU on an array; SwiGLU and GeGLU: out = act(gate) * up), at 8 lanes (AVX2 + FMA)
 * and 16 lanes (AVX-512F, see _simd.h). The two widths compute the same math; the
 * 16-lane reciprocal is rcp14 with one Newton step, ~1.5x the AVX2 throughput.
 *
 * Special values: every activation maps +inf to +inf, -inf to 0 and NaN to NaN.
 */
#ifndef SMALLMIND_ACTIVATIONS_H
#define SMALLMIND_ACTIVATIONS_H

#include "_simd.h"

/*
 * x * sigmoid(s) = x / (1 + exp(-s)), given minus_s = -s and the bound `cut`: where
 * s < -cut the result (|x| e^-cut at most) is returned as 0, which also gives the
 * limit 0 rather than -inf * 0 = NaN for x = -inf. minus_s is clamped to +-cut for
 * exp, so cut must be <= 87.3. NaN in x propagates through the final multiply.
 * Writing 1 + tanh(u) as 2 sigmoid(2u) avoids the cancellation of 1 + tanh for x < 0.
 */
SM_INLINE __m256 sm_x_sigmoid(__m256 x, __m256 minus_s, float cut)
{
    const __m256 vcut = _mm256_set1_ps(cut);
    __m256 clamped = _mm256_min_ps(vcut, _mm256_max_ps(_mm256_set1_ps(-cut), minus_s));
    __m256 y = _mm256_mul_ps(x, sm_recip(_mm256_add_ps(_mm256_set1_ps(1.0f), sm_exp_core(clamped))));
    return _mm256_andnot_ps(_mm256_cmp_ps(minus_s, vcut, _CMP_GT_OQ), y);
}

SM_AVX512 SM_INLINE __m512 sm512_x_sigmoid(__m512 x, __m512 minus_s, float cut)
{
    const __m512 vcut = _mm512_set1_ps(cut);
    __m512 clamped = _mm512_min_ps(vcut, _mm512_max_ps(_mm512_set1_ps(-cut), minus_s));
    __m512 r = sm512_recip(_mm512_add_ps(_mm512_set1_ps(1.0f), sm512_exp_core(clamped)));
    __mmask16 cut_off = _mm512_cmp_ps_mask(minus_s, vcut, _CMP_GT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~cut_off, x, r);
}

/*
 * GELU, tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed
 * as x sigmoid(2u). Cut at |2u| = 87: gelu(x) for 2u < -87 (x < -10) is below 1e-37.
 * -2u = x (c1 + c3 x^2) with c1 = -2 sqrt(2/pi), c3 = -2 sqrt(2/pi) 0.044715.
 */
#define SM_DEFINE_GELU_TANH(NAME, ATTR, V, P, X_SIGMOID)                                    \
    ATTR SM_INLINE V NAME(V x)                                                              \
    {                                                                                       \
        V minus_two_u = P##_mul_ps(x, P##_fmadd_ps(P##_set1_ps(-0.071354816272287f),        \
                                                   P##_mul_ps(x, x),                        \
                                                   P##_set1_ps(-1.5957691216057308f)));     \
        return X_SIGMOID(x, minus_two_u, 87.0f);                                            \
    }

SM_DEFINE_GELU_TANH(sm_gelu_tanh, , __m256, _mm256, sm_x_sigmoid)
SM_DEFINE_GELU_TANH(sm512_gelu_tanh, SM_AVX512, __m512, _mm512, sm512_x_sigmoid)

/* SiLU: x * sigmoid(x). */
SM_INLINE __m256 sm_silu(__m256 x)
{
    return sm_x_sigmoid(x, _mm256_sub_ps(_mm256_setzero_ps(), x), 87.0f);
}

SM_AVX512 SM_INLINE __m512 sm512_silu(__m512 x)
{
    return sm512_x_sigmoid(x, _mm512_sub_ps(_mm512_setzero_ps(), x), 87.0f);
}

/*
 * Phi(x) = 0.5 erfc(-x / sqrt 2), the normal CDF, so that GELU(x) = x Phi(x) exactly.
 * With z = |x| / sqrt 2 and t = 1 / (1 + z/2): erfc(z) = t exp(-z^2 + P(t)), where
 * the degree-9 P was fitted for z in [0, 10] (relative error of erfc 5e-8 in float64,
 * ~3e-7 after float32 rounding). Using erfc for both signs keeps the relative error
 * small in the tail (x << 0), where 1 + erf(.) would cancel. This returns the tail
 * 0.5 erfc(z) from z; z = inf gives exp(-inf) = 0, so tail = 0, as it should.
 */
#define SM_DEFINE_ERFC_TAIL(NAME, ATTR, V, P, RECIP, EXP)                                   \
    ATTR SM_INLINE V NAME(V z)                                                              \
    {                                                                                       \
        V t = RECIP(P##_fmadd_ps(z, P##_set1_ps(0.5f), P##_set1_ps(1.0f)));                 \
        V p = P##_set1_ps(1.421949099e-01f);                                                \
        p = P##_fmadd_ps(p, t, P##_set1_ps(-6.660666333e-01f));                             \
        p = P##_fmadd_ps(p, t, P##_set1_ps(1.122409183e+00f));                              \
        p = P##_fmadd_ps(p, t, P##_set1_ps(-6.512591801e-01f));                             \
        p = P##_fmadd_ps(p, t, P##_set1_ps(-1.167788777e-01f));                             \
        p = P##_fmadd_ps(p, t, P##_set1_ps(2.019153590e-02f));                              \
        p = P##_fmadd_ps(p, t, P##_set1_ps(2.835856178e-02f));                              \
        p = P##_fmadd_ps(p, t, P##_set1_ps(3.878994360e-01f));                              \
        p = P##_fmadd_ps(p, t, P##_set1_ps(9.984925487e-01f));                              \
        p = P##_fmadd_ps(p, t, P##_set1_ps(-1.265441440e+00f));                             \
        return P##_mul_ps(P##_mul_ps(P##_set1_ps(0.5f), t), EXP(P##_fnmadd_ps(z, z, p)));   \
    }

SM_DEFINE_ERFC_TAIL(sm_erfc_tail, , __m256, _mm256, sm_recip, sm_exp)
SM_DEFINE_ERFC_TAIL(sm512_erfc_tail, SM_AVX512, __m512, _mm512, sm512_recip, sm512_exp)

/* GELU, exact erf form: x Phi(x). Past z = 14 the tail underflows anyway; capping z keeps
 * rcp away from inf (rcp(inf) = 0 would turn the Newton step into inf * 0); min keeps
 * NaN. x = -inf would give -inf * 0 = NaN, hence the fix-up below -20. */
SM_INLINE __m256 sm_gelu_erf(__m256 x)
{
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_min_ps(_mm256_set1_ps(14.0f),
                             _mm256_mul_ps(_mm256_andnot_ps(sign_bit, x), _mm256_set1_ps(0.70710678118654752f)));
    __m256 tail = sm_erfc_tail(z);
    __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 cdf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), tail), tail, negative);
    __m256 very_negative = _mm256_cmp_ps(x, _mm256_set1_ps(-20.0f), _CMP_LT_OQ);
    return _mm256_andnot_ps(very_negative, _mm256_mul_ps(x, cdf));
}

SM_AVX512 SM_INLINE __m512 sm512_gelu_erf(__m512 x)
{
    __m512 z = _mm512_min_ps(_mm512_set1_ps(14.0f),
                             _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f)));
    __m512 tail = sm512_erfc_tail(z);
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 cdf = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), tail), negative, tail);
    __mmask16 very_negative = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-20.0f), _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~very_negative, x, cdf);
}

/*
 * "fast" GELU: the tanh form with the cheap exp and the approximate reciprocal
 * (relative error 3.7e-4; rcp14 on AVX-512) instead of a divide. With e = exp(-|2u|)
 * <= 1 and r ~ 1 / (1 + e): sigmoid(|2u|) = 1 - e r and sigmoid(-|2u|) = e r; writing
 * the positive side as 1 - e r keeps the rcp error proportional to e, so the error never
 * grows like |x|. The tanh formula itself is 4.7e-4 away from the erf GELU. Below -11
 * the true value is < 1e-37; zeroing there also turns -inf * tiny = -inf into 0.
 */
SM_INLINE __m256 sm_gelu_fast(__m256 x)
{
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 two_u = _mm256_mul_ps(x, _mm256_fmadd_ps(_mm256_set1_ps(0.071354816272287f), _mm256_mul_ps(x, x),
                                                    _mm256_set1_ps(1.5957691216057308f)));
    __m256 e = sm_exp_fast_nonpositive(_mm256_or_ps(two_u, sign_bit));      /* exp(-|2u|) */
    __m256 er = _mm256_mul_ps(e, _mm256_rcp_ps(_mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 y = _mm256_mul_ps(x, _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), er), er, negative));
    __m256 very_negative = _mm256_cmp_ps(x, _mm256_set1_ps(-11.0f), _CMP_LT_OQ);
    return _mm256_andnot_ps(very_negative, y);
}

SM_AVX512 SM_INLINE __m512 sm512_gelu_fast(__m512 x)
{
    __m512 two_u = _mm512_mul_ps(x, _mm512_fmadd_ps(_mm512_set1_ps(0.071354816272287f), _mm512_mul_ps(x, x),
                                                    _mm512_set1_ps(1.5957691216057308f)));
    __m512 e = sm512_exp_fast_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(two_u)));
    __m512 er = _mm512_mul_ps(e, _mm512_rcp14_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 sig = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), er), negative, er);
    __mmask16 very_negative = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-11.0f), _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~very_negative, x, sig);
}

/* ---------------------------------------------------------------------------------
 * Array loops. Every element goes through the same vector code (a ragged tail under a
 * lane mask), so the result does not depend on the array length or position.
 * --------------------------------------------------------------------------------- */

/* out[i] = fn(x[i]) over one instruction set's vectors (ISA: SM256 or SM512): two vectors
 * a step, then masked steps of one vector. */
#define SM_UNARY_ARRAY_OF(ISA, NAME, FN)                                                    \
    ISA##_ATTR static void NAME(const float* x, float* out, ptrdiff_t n)                    \
    {                                                                                       \
        ptrdiff_t i = 0;                                                                    \
        for (; i + 2 * ISA##_LANES <= n; i += 2 * ISA##_LANES) {                            \
            ISA##_STORE(out + i, FN(ISA##_LOAD(x + i)));                                    \
            ISA##_STORE(out + i + ISA##_LANES, FN(ISA##_LOAD(x + i + ISA##_LANES)));        \
        }                                                                                   \
        for (; i < n; i += ISA##_LANES) {                                                   \
            ISA##_MASK m = ISA##_TAIL_MASK(n - i);                                          \
            ISA##_MASK_STORE(out + i, m, FN(ISA##_MASK_LOAD(x + i, m)));                    \
        }                                                                                   \
    }

/* What SM_UNARY_ARRAY_OF needs of each instruction set. */
#define SM256_ATTR
#define SM256_LANES 8
#define SM256_LOAD(p) _mm256_loadu_ps(p)
#define SM256_STORE(p, v) _mm256_storeu_ps(p, v)
#define SM256_MASK __m256i
#define SM256_TAIL_MASK(k) sm_tail_mask(k)
#define SM256_MASK_LOAD(p, m) _mm256_maskload_ps(p, m)
#define SM256_MASK_STORE(p, m, v) _mm256_maskstore_ps(p, m, v)
#define SM512_ATTR SM_AVX512
#define SM512_LANES 16
#define SM512_LOAD(p) _mm512_loadu_ps(p)
#define SM512_STORE(p, v) _mm512_storeu_ps(p, v)
#define SM512_MASK __mmask16
#define SM512_TAIL_MASK(k) sm512_tail_mask(k)
#define SM512_MASK_LOAD(p, m) _mm512_maskz_loadu_ps(m, p)
#define SM512_MASK_STORE(p, m, v) _mm512_mask_storeu_ps(p, m, v)

#define SM_UNARY_ARRAY(NAME, FN) SM_UNARY_ARRAY_OF(SM256, NAME, FN)
#define SM512_UNARY_ARRAY(NAME, FN) SM_UNARY_ARRAY_OF(SM512, NAME, FN)

/* out[i] = act(gate[i]) * up[i]; out may alias gate or up. */
#define SM_GATED_ARRAY(NAME, ACT)                                                           \
    static void NAME(const float* gate, const float* up, float* out, ptrdiff_t n)           \
    {                                                                                       \
        ptrdiff_t i = 0;                                                                    \
        for (; i + 8 <= n; i += 8)                                                          \
            _mm256_storeu_ps(out + i, _mm256_mul_ps(ACT(_mm256_loadu_ps(gate + i)),         \
                                                    _mm256_loadu_ps(up + i)));              \
        if (i < n) {                                                                        \
            __m256i m = sm_tail_mask(n - i);                                                \
            _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(ACT(_mm256_maskload_ps(gate + i, m)), \
                                                          _mm256_maskload_ps(up + i, m)));  \
        }                                                                                   \
    }

#define SM512_GATED_ARRAY(NAME, ACT)                                                        \
    SM_AVX512 static void NAME(const float* gate, const float* up, float* out, ptrdiff_t n) \
    {                                                                                       \
        for (ptrdiff_t i = 0; i < n; i += 16) {                                             \
            __mmask16 m = sm512_tail_mask(n - i);                                           \
            __m512 g = ACT(_mm512_maskz_loadu_ps(m, gate + i));                             \
            _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i))); \
        }                                                                                   \
    }

SM_UNARY_ARRAY(sm_gelu_tanh_array, sm_gelu_tanh)
SM_UNARY_ARRAY(sm_gelu_erf_array, sm_gelu_erf)
SM_UNARY_ARRAY(sm_gelu_fast_array, sm_gelu_fast)
SM_GATED_ARRAY(sm_geglu_array, sm_gelu_tanh)
SM_GATED_ARRAY(sm_swiglu_array, sm_silu)

SM512_UNARY_ARRAY(sm512_gelu_tanh_array, sm512_gelu_tanh)
SM512_UNARY_ARRAY(sm512_gelu_erf_array, sm512_gelu_erf)
SM512_UNARY_ARRAY(sm512_gelu_fast_array, sm512_gelu_fast)
SM512_GATED_ARRAY(sm512_geglu_array, sm512_gelu_tanh)
SM512_GATED_ARRAY(sm512_swiglu_array, sm512_silu)

#endif /* SMALLMIND_ACTIVATIONS_H */
