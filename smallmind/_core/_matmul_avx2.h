/*
 * AVX2 + FMA kernels (the baseline every supported CPU runs).
 *
 * Quantised weights: the activations are quantised to int8 per block (see _quant.h) and
 * every block's dot product is an integer one: _mm256_maddubs_epi16 multiplies the
 * unsigned weight codes by the signed activation codes and adds adjacent pairs into
 * int16 (no saturation: |pair| <= 2*63*127), _mm256_madd_epi16 widens to int32, and the
 * per-block int32 sums are scaled in float by d_weight*d_activation. Q8_0 weights are
 * signed, so they use the sign trick maddubs(|w|, sign(x, w)).
 *
 * Each kernel computes a tile of R weight rows x C activation rows so that a weight
 * block, once unpacked, serves C activations and an activation block serves R rows:
 * R=4, C=1 for decoding (one token, rows sharing the activation loads), R=2, C=4 for
 * prompt processing.
 */
#ifndef SMALLMIND_MATMUL_AVX2_H
#define SMALLMIND_MATMUL_AVX2_H

#include "_quant.h"
#include "_simd_dispatch.h"

#define SMM_INLINE static inline __attribute__((always_inline))

/* The start of every R x C tile kernel (AVX2 and AVX-512): views a[c] of the C activation
 * rows (act + c * astride, made by `at`) and the accumulators acc[r][c] set to `zero`. */
#define SMM_TILE_START(a, at, acc, zero)                                           \
    _Pragma("GCC unroll 4") for (int c_ = 0; c_ < C; c_++) a[c_] = at(act + c_ * astride, cols); \
    _Pragma("GCC unroll 4") for (int r_ = 0; r_ < R; r_++)                         \
        _Pragma("GCC unroll 4") for (int c_ = 0; c_ < C; c_++) acc[r_][c_] = (zero);

/* Software prefetch of the next tile's weights. A tile reads R rows at once, R streams
 * the hardware prefetchers follow only partly, and its loop body is long (unpacking,
 * integer dot products), so out-of-order execution alone keeps only a few lines per row
 * in flight: quantised types streamed from DRAM at a third to half of their in-cache rate
 * (measured on Zen 3, Zen 4). The next R rows (rows are contiguous, so they are the bytes
 * at w + R * wstride) are fetched into L1 in step with this tile: while the tile is at
 * byte `done` of its own R * wstride bytes (`step` bytes per block), the same offset of
 * the next tile is requested. One tile ahead is 1.5-10 KB (R = 4, 576-2048 columns):
 * more than the bytes in flight that DRAM latency x bandwidth needs, less than L1. */
SMM_INLINE void smm_prefetch_next_tile(const uint8_t* w, int R, ptrdiff_t wstride, ptrdiff_t done, int step)
{
    const uint8_t* p = w + R * wstride + done;
    for (int o = 0; o < step; o += 64) _mm_prefetch((const char*)(p + o), _MM_HINT_T0);
    /* a step that is not a multiple of 64 may end in one more line */
    if (step & 63) _mm_prefetch((const char*)(p + step - 1), _MM_HINT_T0);
}

/* Horizontal sums of four 8-lane vectors -> one 4-lane vector (a, b, c, d). */
SMM_INLINE __m128 smm_hsum4x8(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_hadd_ps(a, b);
    __m256 cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

SMM_INLINE float smm_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y = (accumulate ? y : 0) + v + bias */
SMM_INLINE void smm_store1(float* y, float v, const float* bias, ptrdiff_t r, int accumulate)
{
    if (bias) v += bias[r];
    *y = accumulate ? *y + v : v;
}

/* 16 packed nibbles -> 32 bytes in element order (low nibbles, then high nibbles).
 * The broadcast load fills both 128-bit halves; the upper half is shifted right by 4. */
SMM_INLINE __m256i smm_unpack_nibbles(const uint8_t* qs)
{
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)qs));
    v = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* A float read from any address (the 32-bit fifth-bit words of Q5 blocks are unaligned). */
typedef float smm_f32_unaligned __attribute__((may_alias, aligned(1)));

/* Byte j = 0x10 where bit j of the 32-bit word at `qh` is set, else 0: the fifth bits of a
 * Q5 block. The word is broadcast straight from memory (a load, where a general-purpose
 * register would take a move and a shuffle) and byte (j / 8) is spread to byte j. */
SMM_INLINE __m256i smm_fifth_bits(const uint8_t* qh)
{
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                             0x0101010101010101LL, 0);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_castps_si256(_mm256_set1_ps(*(const smm_f32_unaligned*)qh));
    v = _mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(0x10));
}

/* The codes of one 32-element block of a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 row, unsigned (signed
 * for Q8_0), in element order. (Scales are read separately, 8 blocks at a time.) */
SMM_INLINE __m256i smm_w32_avx2(const int type, const uint8_t* b)
{
    switch (type) {
    case SMM_Q4_0:
        return smm_unpack_nibbles(b + 2);
    case SMM_Q4_1:
        return smm_unpack_nibbles(b + 4);
    case SMM_Q5_0:
        return _mm256_or_si256(smm_unpack_nibbles(b + 6), smm_fifth_bits(b + 2));
    case SMM_Q5_1:
        return _mm256_or_si256(smm_unpack_nibbles(b + 8), smm_fifth_bits(b + 4));
    default: /* SMM_Q8_0 */
        return _mm256_loadu_si256((const __m256i*)(b + 2));
    }
}

/* Pointers into one quantised activation row (Q32 layout). */
typedef struct {
    const int8_t* q;
    const int32_t* corr;
    const float* d;
    const float* s;
    const int32_t* sumq;
} smm_act32;

SMM_INLINE smm_act32 smm_act32_at(const uint8_t* row, ptrdiff_t cols)
{
    smm_act32 a;
    ptrdiff_t nb = cols / 32;
    a.q = (const int8_t*)row;
    a.corr = (const int32_t*)(row + smm_act32_qbytes(cols));
    a.d = (const float*)(row + 2 * smm_act32_qbytes(cols));
    a.s = a.d + nb;
    a.sumq = (const int32_t*)(a.s + nb);
    return a;
}

/* The f16 scales d (and mins m, with `has_min`) of `nbc` <= 8 consecutive blocks `bb` bytes
 * apart, as 8 floats (lanes past nbc are 0). The 32-bit words at the blocks' starts (d, then
 * m or the first code bytes) are paired into 64-bit words with scalar loads, a shift and an
 * or, which run on the integer ALUs while the vector pipes do the dot products; one in-lane
 * byte shuffle and one permute (per 8 blocks, outside the block loop) then split them into
 * 8 d's and 8 m's. A vpgatherdd of the same words is microcoded on Zen 2/3 and cost about
 * as much as the 8 blocks' dot products, and a scalar 16-bit field at a time took twice the
 * instructions of this. */
SMM_INLINE void smm_q32_scales8(const int has_min, const uint8_t* p, const int bb, const int nbc, __m256* d,
                                __m256* m)
{
    uint64_t q[4] = {0, 0, 0, 0};
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        if (2 * k < nbc) q[k] = smm_ld32(p + 2 * k * bb);
        if (2 * k + 1 < nbc) q[k] |= (uint64_t)smm_ld32(p + (2 * k + 1) * bb) << 32;
    }
    const __m256i sel = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    __m256i g = _mm256_set_epi64x((long long)q[3], (long long)q[2], (long long)q[1], (long long)q[0]);
    g = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(g, sel), 0xD8); /* d0..d7 | m0..m7 */
    *d = _mm256_cvtph_ps(_mm256_castsi256_si128(g));
    if (has_min) *m = _mm256_cvtph_ps(_mm256_extracti128_si256(g, 1));
}

/*
 * Tile of R weight rows (w + r*wstride) x C activation rows (act + c*astride) over nb
 * blocks: out[r][c] = dot(W[r], x[c]). Scales are handled 8 blocks at a time: the f16
 * scales (and mins) of 8 blocks of a row are packed by smm_q32_scales8, S = d_w * d_x is
 * computed for the 8 and stored, and each block's FMA broadcasts its S from memory (a
 * load, no shuffle). Q4_0/Q5_0 codes carry an offset of 8/16: sum((q-8)*x) = sum(q*x) -
 * 8*sum(x), folded into the int32 lanes (8 lanes, so each subtracts sumq or 2*sumq). The
 * mins of Q4_1/Q5_1 are one 8-lane FMA with the activation sums per 8 blocks (lanes are
 * all summed at the end). The block loop takes one row at a time so that only that row's
 * codes are live: with all R rows' codes live, GCC spilled accumulators to the stack (AVX2
 * has 16 ymm registers) and the loop became latency-bound. Every (r, c) pair goes through
 * the same operations in the same order whatever R and C are, so a row's result does not
 * depend on how many activation rows share the call.
 */
SMM_INLINE void smm_q32_tile_avx2(const int type, const int R, const int C,
                                  const uint8_t* w, ptrdiff_t wstride,
                                  const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                                  float out[4][4])
{
    const ptrdiff_t nb = cols / 32;
    const int bb = smm_block_bytes(type);
    const int has_min = type == SMM_Q4_1 || type == SMM_Q5_1;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][4];
    float S[4][4][8] __attribute__((aligned(32)));
    smm_act32 a[4];
    SMM_TILE_START(a, smm_act32_at, acc, _mm256_setzero_ps())

    for (ptrdiff_t b0 = 0; b0 < nb; b0 += 8) {
        const int nbc = (int)(nb - b0 < 8 ? nb - b0 : 8);
        const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32(nbc), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256 dw, mw = _mm256_setzero_ps();
            if (nbc == 8) smm_q32_scales8(has_min, w + r * wstride + b0 * bb, bb, 8, &dw, &mw);
            else smm_q32_scales8(has_min, w + r * wstride + b0 * bb, bb, nbc, &dw, &mw);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                _mm256_store_ps(S[r][c], _mm256_mul_ps(dw, _mm256_maskload_ps(a[c].d + b0, km)));
                if (has_min) acc[r][c] = _mm256_fmadd_ps(mw, _mm256_maskload_ps(a[c].s + b0, km), acc[r][c]);
            }
        }
        for (int i = 0; i < nbc; i++) {
            const ptrdiff_t b = b0 + i;
            __m256i xv[4], corr[4];
            smm_prefetch_next_tile(w, R, wstride, b * R * bb, R * bb);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                xv[c] = _mm256_loadu_si256((const __m256i*)(a[c].q + 32 * b));
                if (type == SMM_Q4_0) corr[c] = _mm256_set1_epi32(a[c].sumq[b]);
                if (type == SMM_Q5_0) corr[c] = _mm256_set1_epi32(2 * a[c].sumq[b]);
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i wq = smm_w32_avx2(type, w + r * wstride + b * bb);
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    __m256i p16;
                    if (type == SMM_Q8_0)
                        p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv[c], wq));
                    else
                        p16 = _mm256_maddubs_epi16(wq, xv[c]);
                    __m256i p32 = _mm256_madd_epi16(p16, ones);
                    if (type == SMM_Q4_0 || type == SMM_Q5_0) p32 = _mm256_sub_epi32(p32, corr[c]);
                    acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_broadcast_ss(&S[r][c][i]), acc[r][c]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) out[r][c] = smm_hsum8(acc[r][c]);
}

/* ------------------------------------------------------------------------------------
 * K-quants (256-element blocks) against QK activations.
 * ---------------------------------------------------------------------------------- */

typedef struct {
    const int8_t* q;
    const float* d;
    const int16_t* bsum;
    const int16_t* bsp;
    const float* xs;
} smm_actk;

SMM_INLINE smm_actk smm_actk_at(const uint8_t* row, ptrdiff_t cols)
{
    smm_actk a;
    a.q = (const int8_t*)row;
    a.d = (const float*)(row + cols);
    a.bsum = (const int16_t*)(a.d + cols / 256);
    a.bsp = a.bsum + cols / 16;
    a.xs = (const float*)(a.bsp + cols / 32);
    return a;
}

/* Per-block constants of one K-quant weight block, decoded once per block and tile row. */
typedef struct {
    __m256 d;        /* d in every lane */
    __m256 mins;     /* Q4_K/Q5_K: dmin times the 8 sub-block mins, against the activations' xs */
    /* int16 sub-block scales laid out for smm_kscale: Q4_K/Q5_K the 8 scales in each 128-bit
     * lane; Q6_K the 16 scales of 16 elements, the even ones in the low lane and the odd
     * ones in the high lane (a 32-element sub-block's pair sums are 8 of each). */
    __m256i sc;
    __m256i off;     /* Q6_K: the scales (element order) times -32, for the codes' offset */
} smm_kblock;

/* Vector decoding, not scalar: unpacking the 6-bit scales one at a time was about half
 * the instructions of a Q4_K block (8 sub-blocks of a few vector operations each). */
SMM_INLINE void smm_kblock_decode(const int type, const uint8_t* b, smm_kblock* k)
{
    if (type == SMM_Q4_K || type == SMM_Q5_K) {
        /* the 12 bytes of 6-bit scales and mins, 4 at a time in 32-bit words */
        const uint32_t s0 = smm_ld32(b + 4), s1 = smm_ld32(b + 8), s2 = smm_ld32(b + 12);
        const uint32_t sc_lo = s0 & 0x3F3F3F3Fu, m_lo = s1 & 0x3F3F3F3Fu;
        const uint32_t sc_hi = (s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u);
        const uint32_t m_hi = ((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u);
        k->sc = _mm256_cvtepu8_epi16(_mm_set1_epi64x((long long)(sc_lo | (uint64_t)sc_hi << 32)));
        const __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)(m_lo | (uint64_t)m_hi << 32))));
        const __m256 dm = _mm256_cvtph_ps(_mm_set1_epi32((int)smm_ld32(b))); /* d, dmin, d, dmin ... */
        k->d = _mm256_permute_ps(dm, 0x00);
        k->mins = _mm256_mul_ps(_mm256_permute_ps(dm, 0x55), mins);
    } else if (type == SMM_Q6_K) {
        const __m128i raw = _mm_loadu_si128((const __m128i*)(b + 192));
        const __m128i even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        k->sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(raw, even_odd));
        k->off = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(raw), _mm256_set1_epi16(-32));
        k->d = _mm256_set1_ps(smm_f16(b + 208));
    } else { /* Q8_K */
        float d;
        memcpy(&d, b, 4);
        k->d = _mm256_set1_ps(d);
        k->sc = _mm256_set1_epi16(1);
    }
}

/* The int16 multipliers madd applies to the 16 pair sums of sub-block s: one in-lane byte
 * shuffle of the decoded scales (a broadcast from a general-purpose register took three
 * operations). */
SMM_INLINE __m256i smm_kscale(const smm_kblock* k, const int s)
{
    return _mm256_shuffle_epi8(k->sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * s)));
}

/* Codes of sub-block s (elements 32s..32s+32) of a K block, as unsigned bytes (signed
 * for Q8_K). The loads are memory operands of the shifts and masks. */
SMM_INLINE __m256i smm_ksub_avx2(const int type, const uint8_t* b, const int s)
{
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    if (type == SMM_Q4_K || type == SMM_Q5_K) {
        const uint8_t* qs = b + (type == SMM_Q5_K ? 48 : 16) + 32 * (s / 2);
        __m256i v = _mm256_loadu_si256((const __m256i*)qs);
        if (s & 1) v = _mm256_srli_epi16(v, 4);
        v = _mm256_and_si256(v, lo4);
        if (type == SMM_Q5_K) { /* bit s of qh[l] -> bit 4 */
            __m256i h = _mm256_loadu_si256((const __m256i*)(b + 16));
            if (s != 4) h = s < 4 ? _mm256_slli_epi16(h, 4 - s) : _mm256_srli_epi16(h, s - 4);
            v = _mm256_or_si256(v, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
        }
        return v;
    } else if (type == SMM_Q6_K) {
        const int h = s / 4, kk = s % 4;
        __m256i lo = _mm256_loadu_si256((const __m256i*)(b + 64 * h + 32 * (kk & 1)));
        if (kk >= 2) lo = _mm256_srli_epi16(lo, 4);
        lo = _mm256_and_si256(lo, lo4);
        __m256i hi = _mm256_loadu_si256((const __m256i*)(b + 128 + 32 * h));
        /* the 2 bits at 2kk, moved to bits 4-5 */
        if (kk != 2) hi = kk < 2 ? _mm256_slli_epi16(hi, 4 - 2 * kk) : _mm256_srli_epi16(hi, 2 * kk - 4);
        hi = _mm256_and_si256(hi, _mm256_set1_epi8(0x30));
        return _mm256_or_si256(lo, hi);
    } else {
        return _mm256_loadu_si256((const __m256i*)(b + 4 + 32 * s));
    }
}

/* Pins v to a register at this point of the program. Without it GCC reassociated the
 * sums over the 8 sub-blocks of a block: it computed all the products first, spilled them
 * (32 ymm for a 2 x 4 tile; AVX2 has 16 registers) and added them up afterwards, which
 * cost a store and a load per product (with the other changes of that commit, K-quant
 * tiles of n >= 4 rows ran 1.1-1.3x faster on Zen 3, n = 1 1.1-1.25x). */
#define SMM_PIN(v) __asm__("" : "+x"(v))

/*
 * acc + in each 32-bit lane the sum of its 4 products of unsigned bytes of u and signed bytes
 * of s: vpdpbusd, in the form V (SMM_VNNI_EVEX, _VEX or _EMULATED, _simd_dispatch.h). One
 * instruction for maddubs + madd + add, and exact (no int16 step to saturate), so a kernel
 * gives the same integer sums with it as with maddubs. Inline assembly, not the intrinsics:
 * those need the VNNI target in every function that inlines them, and the kernels are
 * compiled once for AVX2 and only reach this with V != NONE when smm_vnni_active says the
 * CPU has the instruction. EMULATED forms the same sums from AVX2 operations (slower),
 * so that tests run the VNNI kernels' code paths on any CPU.
 */
SMM_INLINE __m256i smm_dpbusd(const int V, __m256i acc, __m256i u, __m256i s)
{
    if (V == SMM_VNNI_EVEX) {
        __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    } else if (V == SMM_VNNI_VEX) {
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    } else { /* even and odd bytes widened to int16 (u zero-, s sign-extended), then madd */
        const __m256i ue = _mm256_and_si256(u, _mm256_set1_epi16(0x00FF)), uo = _mm256_srli_epi16(u, 8);
        const __m256i se = _mm256_srai_epi16(_mm256_slli_epi16(s, 8), 8), so = _mm256_srai_epi16(s, 8);
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ue, se), _mm256_madd_epi16(uo, so)));
    }
    return acc;
}

/* Calls CALL(T, V) with the VNNI form `mode` as the compile-time constant V. */
#define SMM_VNNI_SWITCH(mode, CALL, T)                         \
    switch (mode) {                                            \
    case SMM_VNNI_EVEX: CALL(T, SMM_VNNI_EVEX); break;         \
    case SMM_VNNI_VEX: CALL(T, SMM_VNNI_VEX); break;           \
    case SMM_VNNI_EMULATED: CALL(T, SMM_VNNI_EMULATED); break; \
    default: CALL(T, SMM_VNNI_NONE); break;                    \
    }

/* A block's integer sums (one activation row, one weight row) into the running float sums:
 * d * dx * sums, less the mins against the activation's sums per 32 (xs) for Q4_K/Q5_K. */
SMM_INLINE void smm_qk_fold(int has_min, __m256* acc, __m256i isum, __m256 d, __m256 mins, __m256 dx,
                            const float* xs)
{
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, dx), *acc);
    if (has_min) *acc = _mm256_fnmadd_ps(mins, _mm256_loadu_ps(xs), *acc);
}

/*
 * Tile of R weight rows x C activation rows over the 256-element blocks. Per block and
 * row the scales are decoded once; per sub-block of 32 and row the codes are unpacked once
 * and used by the C activation rows (read from memory as operands of maddubs, so that
 * only the R x C integer sums, one row's codes and its scales occupy registers). maddubs
 * forms int16 pair sums, madd applies the sub-block's int16 scales and adds pairs into
 * int32, so a block costs one int -> float conversion, multiply and FMA per (row,
 * activation row). Q6_K's code offset of 32 starts the integer sums at -32 * sum(scale *
 * activation sum) (one madd). The mins of Q4_K/Q5_K are one more FMA: dmin * mins (8
 * floats, per block and row) against the activations' d * sums per 32 (xs, per block and
 * activation row); an exact integer madd of mins and sums took four operations per pair.
 * Every (r, c) pair goes through the same integer sums and per-lane float operations
 * whatever R and C are, so a row's result does not depend on how many activation rows
 * share the call.
 */
SMM_INLINE void smm_qk_tile_avx2(const int type, const int R, const int C,
                                 const uint8_t* w, ptrdiff_t wstride,
                                 const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                                 float out[4][4])
{
    const ptrdiff_t nb = cols / 256;
    const int bb = smm_block_bytes(type);
    const int has_min = type == SMM_Q4_K || type == SMM_Q5_K;
    __m256 acc[4][4];
    smm_actk a[4];
    SMM_TILE_START(a, smm_actk_at, acc, _mm256_setzero_ps())

    for (ptrdiff_t b = 0; b < nb; b++) {
        smm_kblock kb[4];
        __m256i isum[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            smm_kblock_decode(type, w + r * wstride + b * bb, &kb[r]);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                if (type == SMM_Q6_K)
                    isum[r][c] = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)(a[c].bsum + 16 * b)), kb[r].off);
                else isum[r][c] = _mm256_setzero_si256();
            }
        }
        smm_prefetch_next_tile(w, R, wstride, b * R * bb, R * bb);
#pragma GCC unroll 8
        for (int s = 0; s < 8; s++) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i wq = smm_ksub_avx2(type, w + r * wstride + b * bb, s);
                const __m256i sc = smm_kscale(&kb[r], s);
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i*)(a[c].q + 256 * b + 32 * s));
                    __m256i p16;
                    if (type == SMM_Q8_K) p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq));
                    else p16 = _mm256_maddubs_epi16(wq, xv);
                    isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(p16, sc));
                    SMM_PIN(isum[r][c]);
                }
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const __m256 dx = _mm256_broadcast_ss(a[c].d + b);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) smm_qk_fold(has_min, &acc[r][c], isum[r][c], kb[r].d, kb[r].mins, dx, a[c].xs + 8 * b);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) out[r][c] = smm_hsum8(acc[r][c]);
}

/* Float weights (F32, F16, BF16): matrix-vector and packed GEMM kernels. */
#include "_matmul_float.h"

#endif
