/*
 * Float weights (F32, F16, BF16), AVX2 + FMA + F16C: the matrix-vector kernel for decoding
 * (one weight row at a time, a single prefetched stream) and the packed GEMM for prompts.
 * Included by _matmul_avx2.h (smm_store1, smm_hsum8, SMM_INLINE).
 */
#ifndef SMALLMIND_MATMUL_FLOAT_H
#define SMALLMIND_MATMUL_FLOAT_H

#include "_matmul_avx2.h"

/* ------------------------------------------------------------------------------------
 * Float weights (F32, F16, BF16): weight loads in float32 lanes.
 * ---------------------------------------------------------------------------------- */

/* 8 consecutive weights of a row starting at element k, as float32. */
SMM_INLINE __m256 smm_ldw8(const int type, const uint8_t* row, ptrdiff_t k)
{
    if (type == SMM_F32) return _mm256_loadu_ps((const float*)row + k);
    __m128i h = _mm_loadu_si128((const __m128i*)(row + 2 * k));
    if (type == SMM_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 16 consecutive weights of a row from element k as two float32 vectors, and the 16
 * activations they multiply in the same lane order (smm_ldx16x2). F32 and F16 split them
 * 8 + 8. BF16 is the upper half of an f32, so one 32-byte load holds 16 weights: shifting
 * each 32-bit lane left by 16 gives the even ones as floats and masking off its low half the
 * odd ones (2 ALU ops for 16 weights, where widening 8 at a time takes 4); the activations
 * are split even/odd to match (smm_x_lanes does it once per product). */
SMM_INLINE void smm_ldw16x2(const int type, const uint8_t* row, ptrdiff_t k, __m256* lo, __m256* hi)
{
    if (type == SMM_BF16) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(row + 2 * k));
        *lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        *hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
        return;
    }
    *lo = smm_ldw8(type, row, k);
    *hi = smm_ldw8(type, row, k + 8);
}

SMM_INLINE void smm_ldx16x2(const int type, const float* x, __m256* lo, __m256* hi)
{
    const __m256 xa = _mm256_loadu_ps(x), xb = _mm256_loadu_ps(x + 8);
    if (type == SMM_BF16) {
        /* (x0 x2 x8 x10 | x4 x6 x12 x14), then 64-bit pairs reordered 0 2 1 3 */
        *lo = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(xa, xb, 0x88)), 0xD8));
        *hi = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(xa, xb, 0xDD)), 0xD8));
        return;
    }
    *lo = xa;
    *hi = xb;
}

SMM_INLINE float smm_ldw1(const int type, const uint8_t* row, ptrdiff_t k)
{
    if (type == SMM_F32) {
        float v;
        memcpy(&v, row + 4 * k, 4);
        return v;
    }
    if (type == SMM_F16) return smm_f16(row + 2 * k);
    return smm_bf16_bits(smm_ld16(row + 2 * k));
}

/* ------------------------------------------------------------------------------------
 * Float matrix-vector products (n < SMM_GEMM_MIN_N activation rows).
 *
 * One weight row at a time (several activation rows: see smm_float_rows_avx2_t): the weights
 * are then read as a single sequential stream (rows are contiguous), which the hardware
 * prefetchers follow from one row into the next. Tiles of 4 rows read 4 streams that each
 * ended after one row (3 KB for F16 at 1536 columns): every row restarted the prefetchers
 * and F16/BF16 streamed at 55-75% of the read bandwidth (Zen 3). A software prefetch
 * SMM_FLOAT_AHEAD bytes ahead in the stream keeps enough lines in flight: measured on the
 * Zen 3 VM at 576-2048 columns, one row at a time with it read F16/BF16 at 80-100% and
 * F32 at 93-99%; the distance is per type (for F32 further ahead only added misses in L1
 * against the hardware's own prefetches). Four accumulators over 32 columns cover the FMA
 * latency; the horizontal sum is once per row.
 * ---------------------------------------------------------------------------------- */

#define SMM_FLOAT_AHEAD(type) ((type) == SMM_F32 ? 256 : 1024)
/* Floats of stack for the activations in BF16 lane order (n * cols up to this; 32 KB). */
#define SMM_XLANES_MAX 8192

/* x in the lane order of smm_ldw16x2 for BF16: each full 16 columns even then odd elements
 * (the columns after the last full 16 as they are). */
SMM_INLINE void smm_x_lanes(const float* x, ptrdiff_t cols, float* xl)
{
    ptrdiff_t k = 0;
    for (; k + 16 <= cols; k += 16) {
        __m256 lo, hi;
        smm_ldx16x2(SMM_BF16, x + k, &lo, &hi);
        _mm256_storeu_ps(xl + k, lo);
        _mm256_storeu_ps(xl + k + 8, hi);
    }
    for (; k < cols; k++) xl[k] = x[k];
}

/* The 16 activations from column k of x (in BF16 lane order when `lanes`) as two vectors. */
SMM_INLINE void smm_ldx16(const int type, const float* x, ptrdiff_t k, const int lanes, __m256* xa, __m256* xb)
{
    if (lanes) {
        *xa = _mm256_loadu_ps(x + k);
        *xb = _mm256_loadu_ps(x + k + 8);
    } else smm_ldx16x2(type, x + k, xa, xb);
}

/* out[c] = dot(row, x[c]) over `cols` columns for C = 1 or 2 activation rows, which share
 * each weight load and conversion (several activation rows are compute bound). Each c goes
 * through the same operations in the same order whatever C is, and x in BF16 lane order
 * (`lanes`) or plain gives the same lanes, so a row's result depends on neither. Prefetches
 * `ahead` bytes ahead in the weight stream (0: none). */
SMM_INLINE void smm_float_dots_avx2(const int type, const int C, const uint8_t* row, ptrdiff_t cols,
                                    const float* const* x, const int lanes, ptrdiff_t ahead, float* out)
{
    const int es = type == SMM_F32 ? 4 : 2;
    __m256 a[2][4], xa, xb, lo0, hi0, lo1, hi1;
#pragma GCC unroll 2
    for (int c = 0; c < C; c++) a[c][0] = a[c][1] = a[c][2] = a[c][3] = _mm256_setzero_ps();
    ptrdiff_t k = 0;
    for (; k + 32 <= cols; k += 32) {
        if (ahead) {
            _mm_prefetch((const char*)(row + es * k + ahead), _MM_HINT_T0);
            if (es == 4) _mm_prefetch((const char*)(row + es * k + ahead + 64), _MM_HINT_T0);
        }
        smm_ldw16x2(type, row, k, &lo0, &hi0);
        smm_ldw16x2(type, row, k + 16, &lo1, &hi1);
#pragma GCC unroll 2
        for (int c = 0; c < C; c++) {
            smm_ldx16(type, x[c], k, lanes, &xa, &xb);
            a[c][0] = _mm256_fmadd_ps(lo0, xa, a[c][0]);
            a[c][1] = _mm256_fmadd_ps(hi0, xb, a[c][1]);
            smm_ldx16(type, x[c], k + 16, lanes, &xa, &xb);
            a[c][2] = _mm256_fmadd_ps(lo1, xa, a[c][2]);
            a[c][3] = _mm256_fmadd_ps(hi1, xb, a[c][3]);
        }
    }
    if (k + 16 <= cols) {
        smm_ldw16x2(type, row, k, &lo0, &hi0);
#pragma GCC unroll 2
        for (int c = 0; c < C; c++) {
            smm_ldx16(type, x[c], k, lanes, &xa, &xb);
            a[c][0] = _mm256_fmadd_ps(lo0, xa, a[c][0]);
            a[c][1] = _mm256_fmadd_ps(hi0, xb, a[c][1]);
        }
        k += 16;
    }
    if (k + 8 <= cols) { /* past the last full 16 columns x is in plain order */
        lo0 = smm_ldw8(type, row, k);
#pragma GCC unroll 2
        for (int c = 0; c < C; c++) a[c][2] = _mm256_fmadd_ps(lo0, _mm256_loadu_ps(x[c] + k), a[c][2]);
        k += 8;
    }
#pragma GCC unroll 2
    for (int c = 0; c < C; c++) {
        float s = smm_hsum8(_mm256_add_ps(_mm256_add_ps(a[c][0], a[c][1]), _mm256_add_ps(a[c][2], a[c][3])));
        for (ptrdiff_t i = k; i < cols; i++) s += smm_ldw1(type, row, i) * x[c][i];
        out[c] = s;
    }
}

/* Rows [r0, r1) of W (row r at w + r * wstride) against activation rows t = 0..n-1:
 * y[t, r] (+)= dot(W[r], x[t]) (+ bias[r]), activation rows two at a time. With several,
 * the weight rows go in blocks of about SMM_FLOAT_BLOCK_BYTES that stay in L1 while each
 * pair passes (all n activation rows against one weight row at a time filled L1 with
 * activations from n * cols = 8K floats on). Only the first pair prefetches (the others
 * find the rows in L1). */
#define SMM_FLOAT_BLOCK_BYTES 8192
SMM_INLINE void smm_float_rows_avx2_t(const int type, const uint8_t* w, ptrdiff_t wstride, ptrdiff_t r0,
                                      ptrdiff_t r1, ptrdiff_t cols, const float* x, ptrdiff_t n, ptrdiff_t ldx,
                                      float* y, ptrdiff_t ldy, const float* bias, int accumulate)
{
    float xl[SMM_XLANES_MAX] __attribute__((aligned(32)));
    const int lanes = type == SMM_BF16 && n * cols <= SMM_XLANES_MAX;
    if (lanes)
        for (ptrdiff_t t = 0; t < n; t++) smm_x_lanes(x + t * ldx, cols, xl + t * cols);
    ptrdiff_t block = SMM_FLOAT_BLOCK_BYTES / (wstride > 0 ? wstride : 1);
    block = n == 1 || block < 1 ? 1 : block;
    for (ptrdiff_t b0 = r0; b0 < r1; b0 += block) {
        const ptrdiff_t b1 = b0 + block < r1 ? b0 + block : r1;
        for (ptrdiff_t t = 0; t < n; t += 2) {
            const ptrdiff_t ahead = t == 0 ? SMM_FLOAT_AHEAD(type) : 0;
            const float* xt[2] = {lanes ? xl + t * cols : x + t * ldx, NULL};
            float v[2];
            if (t + 1 < n) xt[1] = lanes ? xl + (t + 1) * cols : x + (t + 1) * ldx;
            for (ptrdiff_t r = b0; r < b1; r++) {
                const uint8_t* row = w + r * wstride;
                if (t + 1 < n) {
                    if (lanes) smm_float_dots_avx2(type, 2, row, cols, xt, 1, ahead, v);
                    else smm_float_dots_avx2(type, 2, row, cols, xt, 0, ahead, v);
                    smm_store1(y + (t + 1) * ldy + r, v[1], bias, r, accumulate);
                } else if (lanes) smm_float_dots_avx2(type, 1, row, cols, xt, 1, ahead, v);
                else smm_float_dots_avx2(type, 1, row, cols, xt, 0, ahead, v);
                smm_store1(y + t * ldy + r, v[0], bias, r, accumulate);
            }
        }
    }
}

static void smm_float_rows_avx2(int type, const uint8_t* w, ptrdiff_t wstride, ptrdiff_t r0, ptrdiff_t r1,
                                ptrdiff_t cols, const float* x, ptrdiff_t n, ptrdiff_t ldx, float* y, ptrdiff_t ldy,
                                const float* bias, int accumulate)
{
    if (type == SMM_F32)
        smm_float_rows_avx2_t(SMM_F32, w, wstride, r0, r1, cols, x, n, ldx, y, ldy, bias, accumulate);
    else if (type == SMM_F16)
        smm_float_rows_avx2_t(SMM_F16, w, wstride, r0, r1, cols, x, n, ldx, y, ldy, bias, accumulate);
    else smm_float_rows_avx2_t(SMM_BF16, w, wstride, r0, r1, cols, x, n, ldx, y, ldy, bias, accumulate);
}

/*
 * Rows [r0, r0+4) (clamped: a duplicate of the last row stands in for missing ones,
 * its results discarded) against activation rows t = 0..n-1, sharing each activation load
 * and one reduction between 4 rows: the faster kernel for matrices that stay in cache
 * between calls (small models), where short rows make a per-row reduction costly.
 */
SMM_INLINE void smm_float_rows4_avx2(const int type, const uint8_t* w, ptrdiff_t wstride, int nvalid,
                                     ptrdiff_t cols, const float* x, ptrdiff_t n, ptrdiff_t ldx,
                                     float* y, ptrdiff_t ldy, const float* bias, ptrdiff_t r0, int accumulate)
{
    const uint8_t* w0 = w;
    const uint8_t* w1 = w + (nvalid > 1 ? 1 : 0) * wstride;
    const uint8_t* w2 = w + (nvalid > 2 ? 2 : 0) * wstride;
    const uint8_t* w3 = w + (nvalid > 3 ? 3 : 0) * wstride;
    for (ptrdiff_t t = 0; t < n; t++) {
        const float* xt = x + t * ldx;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
        ptrdiff_t k = 0;
        for (; k + 16 <= cols; k += 16) {
            __m256 xa, xb, lo, hi;
            smm_ldx16x2(type, xt + k, &xa, &xb);
#define SMM_FMA16(W, A, B) \
            smm_ldw16x2(type, W, k, &lo, &hi); \
            A = _mm256_fmadd_ps(lo, xa, A); \
            B = _mm256_fmadd_ps(hi, xb, B);
            SMM_FMA16(w0, a0, b0) SMM_FMA16(w1, a1, b1) SMM_FMA16(w2, a2, b2) SMM_FMA16(w3, a3, b3)
#undef SMM_FMA16
        }
        if (k + 8 <= cols) {
            __m256 xa = _mm256_loadu_ps(xt + k);
            a0 = _mm256_fmadd_ps(smm_ldw8(type, w0, k), xa, a0);
            a1 = _mm256_fmadd_ps(smm_ldw8(type, w1, k), xa, a1);
            a2 = _mm256_fmadd_ps(smm_ldw8(type, w2, k), xa, a2);
            a3 = _mm256_fmadd_ps(smm_ldw8(type, w3, k), xa, a3);
            k += 8;
        }
        __m128 s = smm_hsum4x8(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1),
                               _mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3));
        float res[4];
        _mm_storeu_ps(res, s);
        for (; k < cols; k++) {
            float xk = xt[k];
            res[0] += smm_ldw1(type, w0, k) * xk;
            res[1] += smm_ldw1(type, w1, k) * xk;
            res[2] += smm_ldw1(type, w2, k) * xk;
            res[3] += smm_ldw1(type, w3, k) * xk;
        }
        float* yt = y + t * ldy + r0;
        for (int r = 0; r < nvalid; r++) smm_store1(yt + r, res[r], bias, r0 + r, accumulate);
    }
}

/* ------------------------------------------------------------------------------------
 * Packed float GEMM (n >= SMM_GEMM_MIN_N): Y[n x rows] (+)= X[n x cols] W^T.
 * W panels of NR rows are packed k-major (Bp[k*NR + j] = W[r0+j][k0+k], converting
 * f16/bf16 on the way) so the micro-kernel reads NR consecutive weights per k; X tiles
 * of MR rows are packed k-major (Ap[k*MR + i]) so it broadcasts MR activations per k.
 * ---------------------------------------------------------------------------------- */

SMM_INLINE void smm_transpose8(__m256* r)
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Pack weight rows [r0, r0+nr) (nr <= NR, the rest zero), columns [k0, k0+kc). */
SMM_INLINE void smm_pack_w(const int type, const uint8_t* w, ptrdiff_t wstride, int nr, const int NR,
                           ptrdiff_t k0, ptrdiff_t kc, float* Bp)
{
    for (int jg = 0; jg < NR; jg += 8) {
        if (jg + 8 <= nr) {
            const uint8_t* rows[8];
            for (int i = 0; i < 8; i++) rows[i] = w + (jg + i) * wstride;
            ptrdiff_t k = 0;
            for (; k + 8 <= kc; k += 8) {
                __m256 v[8];
                for (int i = 0; i < 8; i++) v[i] = smm_ldw8(type, rows[i], k0 + k);
                smm_transpose8(v);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(Bp + (k + i) * NR + jg, v[i]);
            }
            for (; k < kc; k++)
                for (int i = 0; i < 8; i++) Bp[k * NR + jg + i] = smm_ldw1(type, rows[i], k0 + k);
        } else {
            for (ptrdiff_t k = 0; k < kc; k++)
                for (int i = 0; i < 8; i++)
                    Bp[k * NR + jg + i] = jg + i < nr ? smm_ldw1(type, w + (jg + i) * wstride, k0 + k) : 0.0f;
        }
    }
}

/* Pack activation rows [0, mr) (mr <= MR, MR in {4, 8}; missing rows zero), all cols. */
static void smm_pack_x(const float* x, ptrdiff_t ldx, int mr, const int MR, ptrdiff_t cols, float* Ap)
{
    const float* rows[8];
    for (int i = 0; i < 8; i++) rows[i] = x + (i < mr ? i : 0) * ldx;
    ptrdiff_t k = 0;
    for (; k + 8 <= cols; k += 8) {
        __m256 v[8];
        for (int i = 0; i < 8; i++)
            v[i] = i < mr && i < MR ? _mm256_loadu_ps(rows[i] + k) : _mm256_setzero_ps();
        smm_transpose8(v);
        if (MR == 8) {
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(Ap + (k + i) * 8, v[i]);
        } else {
            for (int i = 0; i < 8; i++) _mm_storeu_ps(Ap + (k + i) * 4, _mm256_castps256_ps128(v[i]));
        }
    }
    for (; k < cols; k++)
        for (int i = 0; i < MR; i++) Ap[k * MR + i] = i < mr ? rows[i][k] : 0.0f;
}

/* Writes a finished MR x NR tile held in tmp[MR][NR] into C (partial tiles, bias). */
SMM_INLINE void smm_tile_out(const float* tmp, const int NR, float* C, ptrdiff_t ldc, int mr, int nr,
                             int load_c, const float* bias)
{
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float v = tmp[i * NR + j] + (bias ? bias[j] : 0.0f);
            C[i * ldc + j] = load_c ? C[i * ldc + j] + v : v;
        }
}

/* 4 x 24 micro-kernel: 12 accumulators + 3 weight vectors + 1 broadcast = 16 ymm. */
static void smm_gemm_ukr_avx2(ptrdiff_t kc, const float* Ap, const float* Bp, float* C, ptrdiff_t ldc,
                              int mr, int nr, int load_c, const float* bias)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(), c12 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c22 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c32 = _mm256_setzero_ps();
    for (ptrdiff_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8), b2 = _mm256_loadu_ps(Bp + 16);
        __m256 a = _mm256_broadcast_ss(Ap);
        c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01); c02 = _mm256_fmadd_ps(a, b2, c02);
        a = _mm256_broadcast_ss(Ap + 1);
        c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11); c12 = _mm256_fmadd_ps(a, b2, c12);
        a = _mm256_broadcast_ss(Ap + 2);
        c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21); c22 = _mm256_fmadd_ps(a, b2, c22);
        a = _mm256_broadcast_ss(Ap + 3);
        c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31); c32 = _mm256_fmadd_ps(a, b2, c32);
        Ap += 4;
        Bp += 24;
    }
    __m256 acc[12] = {c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32};
    if (mr == 4 && nr == 24) {
        __m256 bv[3];
        for (int j = 0; j < 3; j++) bv[j] = bias ? _mm256_loadu_ps(bias + 8 * j) : _mm256_setzero_ps();
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++) {
                __m256 v = _mm256_add_ps(acc[3 * i + j], bv[j]);
                if (load_c) v = _mm256_add_ps(v, _mm256_loadu_ps(C + i * ldc + 8 * j));
                _mm256_storeu_ps(C + i * ldc + 8 * j, v);
            }
    } else {
        float tmp[4 * 24];
        for (int i = 0; i < 12; i++) _mm256_storeu_ps(tmp + 8 * i, acc[i]);
        smm_tile_out(tmp, 24, C, ldc, mr, nr, load_c, bias);
    }
}
#endif
