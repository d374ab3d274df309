/*
 * Row-interleaved ("repacked at load") layouts of the 32-element block types and their AVX2
 * kernels (the idea of llama.cpp's Q4_0 8x8 repack and ik_llama.cpp's _R8 types).
 *
 * The plain kernels (_matmul_avx2.h) spend ~10-12 vector instructions per weight block and
 * row: unpacking, maddubs, madd, cvt, fma and the scales, and then a horizontal sum per
 * row. That made matrix-vector products compute-bound at 50-75% of the read bandwidth on
 * Zen 3. Here 8 consecutive weight rows are rewritten, once when the Weight is built, so
 * that each block index b holds the 8 rows' blocks side by side:
 *
 *   f16 d[8] | f16 m[8] (Q4_1, Q5_1) | codes
 *
 * codes: 32-byte vectors, 4 bytes per row (row r in 32-bit lane r). Q4_0/Q4_1: 4 vectors,
 * vector k = bytes 4k..4k+3 of each row's qs: its low nibbles are elements 4k..4k+3
 * ("chunk" k), its high nibbles elements 16+4k..16+4k+3 (chunk k+4). Q8_0: 8 vectors,
 * vector j = elements 4j..4j+3. Q5_0/Q5_1: the 8 chunks' 5-bit codes as one octet of
 * Q5_K's (_matmul_rk.h, P0..P4, 160 bytes): chunks 0-4 take one and each, 5-7 five to
 * eight operations, 23 for the block where a plane of fifth bits beside 4-bit codes took 36
 * (the one-row loop, llvm-mca 19: 17.1 -> 14.1 cycles a block on Zen 3 and Zen 4, 19.8 ->
 * 15.8 on Sapphire Rapids and Skylake). A group of 8 rows takes exactly the bytes of the 8
 * plain rows, so row r of a repacked weight still starts its group at (r & ~7) * row_bytes; rows past
 * the last whole group stay in the plain layout (and run the plain AVX2 kernel).
 *
 * Per block and chunk, the activation's 4 codes are broadcast to all 8 lanes and one
 * maddubs multiplies them against 8 rows at once; the int16 pair sums of several chunks
 * are added before the single madd: 4-bit codes give pairs <= 2*15*127 = 3810, 8 chunks
 * 30480 < 32767; 5-bit ones 2*31*127 = 7874, so two sums of 4 chunks (31496); Q8_0 (|w|
 * <= 128, maddubs(|w|, sign(x, w))) reaches 32512 per pair, so each chunk has its own madd
 * (for Q8_0 the abs/sign trick beats an offset: w + 128 against x overflows int16 at once,
 * and splitting codes doubles the maddubs). No sum saturates, so the integer dot is exact
 * in any order. The row sums are in separate lanes, so a block ends with ONE cvt and ONE
 * fma for 8 rows (scale = the 8 rows' d, one cvtph, times the activation's d), the mins
 * one mul by the activation's block sum (and an add) and the offsets of Q4_0/Q5_0 one
 * subtraction of 8 (16) x the activation's code sum from the int32 lanes. Instructions
 * per block and 8 rows (decoding; python tools/mca_kernels.py --decode): Q4_0/Q4_1 ~57, Q5
 * and Q8_0 ~70, 7-9 per row where the plain kernels spent ~11.
 *
 * A tile is 8 rows x C activation rows (C <= 4; an unpacked weight chunk serves C
 * activations). Every (row, activation row) pair runs the same float operations in the
 * same order whatever C is, so a row's result does not depend on n. Prompts unpack the
 * codes once into panels instead (_matmul_r8panel.h), with the same operations per pair.
 *
 * These kernels are AVX2 and run on every ISA: an AVX-512 machine multiplies repacked
 * weights here too (the AVX-512 kernels read the plain layout). Where the CPU has vpdpbusd
 * (AVX512-VNNI or AVX-VNNI, smm_dpbusd), tiles and panels of 2 or more activation rows use
 * it for maddubs + madd + add, still on 256-bit vectors: the same layout, the same integer
 * sums, so the same outputs bit for bit. llvm-mca 19 (Sapphire Rapids, Alder Lake, Ice
 * Lake server and Zen 4 models) puts a Q4_1 / Q5_0 panel slice at 1.24-1.48x fewer cycles
 * per block and a 4-row Q8_0 tile at 1.37-1.45x (estimates: tools/mca_kernels.py, and
 * BENCHMARKS.md on how they compare with a measurement); for the K-quants (_matmul_rk.h), whose
 * sub-block scales then need a vpmulld, it found 0.96-1.24x, so they keep maddubs. A single
 * row (decoding) keeps maddubs too: its one chain would wait on vpdpbusd's latency.
 */
#ifndef SMALLMIND_MATMUL_R8_H
#define SMALLMIND_MATMUL_R8_H

#include "_matmul_avx2.h"
#include "_matmul_rk.h"

/* Types with a repacked layout (plain GGML type ids): the 32-element block types here, the
 * K-quants in _matmul_rk.h. */
static inline int smm_r8_supported(int type)
{
    return type == SMM_Q4_0 || type == SMM_Q4_1 || type == SMM_Q5_0 || type == SMM_Q5_1 || type == SMM_Q8_0 ||
           smm_rk_supported(type);
}

static inline int smm_r8_has_min(int type) { return type == SMM_Q4_1 || type == SMM_Q5_1; }
static inline int smm_r8_five(int type) { return type == SMM_Q5_0 || type == SMM_Q5_1; }

/* Byte offsets in a plain block: the first code byte, the fifth bits. */
static inline int smm_plain_qs(int type) { return type == SMM_Q8_0 || type == SMM_Q4_0 ? 2 : type == SMM_Q5_1 ? 8 : type == SMM_Q5_0 ? 6 : 4; }
static inline int smm_plain_qh(int type) { return type == SMM_Q5_1 ? 4 : 2; }
/* Byte offset of the codes in a repacked block (after d and m of the 8 rows). */
static inline int smm_r8_qs(int type) { return 16 + 16 * smm_r8_has_min(type); }

/* Q5_0/Q5_1: a plain block's 32 5-bit codes (element order) to q (to_plain = 0) or from q.
 * Element e has its low 4 bits in nibble e / 16 of qs[e % 16], its fifth in bit e of qh. */
static void smm_r8_q5_plain_codes(int type, uint8_t* blk, uint8_t q[32], int to_plain)
{
    uint8_t *qs = blk + smm_plain_qs(type), *qhp = blk + smm_plain_qh(type);
    uint32_t qh;
    memcpy(&qh, qhp, 4);
    if (to_plain) qh = 0;
    for (int e = 0; e < 32; e++) {
        if (to_plain) {
            if (e < 16) qs[e] = (uint8_t)((q[e] & 15) | (q[e + 16] & 15) << 4);
            qh |= (uint32_t)(q[e] >> 4 & 1) << e;
        } else {
            q[e] = (uint8_t)((qs[e % 16] >> 4 * (e / 16) & 15) | (qh >> e & 1) << 4);
        }
    }
    if (to_plain) memcpy(qhp, &qh, 4);
}

/* Copies block `b` of row r (0..7) between the plain layout (`plain`, one block) and the
 * repacked block `rb` of its group: to_plain = 0 repacks, 1 restores. */
static void smm_r8_move_block(int type, uint8_t* rb, uint8_t* plain, int r, int to_plain)
{
    if (smm_rk_supported(type)) {
        smm_rk_move_block(type, rb, plain, r, to_plain);
        return;
    }
    smm_move_bytes(rb + 2 * r, plain, 2, to_plain);
    if (smm_r8_has_min(type)) smm_move_bytes(rb + 16 + 2 * r, plain + 2, 2, to_plain);
    if (smm_r8_five(type)) { /* the 32 codes of the row into (out of) the block's octet */
        uint8_t q[32];
        if (!to_plain) smm_r8_q5_plain_codes(type, plain, q, 0);
        smm_octet_move(rb + smm_r8_qs(type), r, q, to_plain);
        if (to_plain) smm_r8_q5_plain_codes(type, plain, q, 1);
        return;
    }
    const int chunks = type == SMM_Q8_0 ? 8 : 4;
    for (int k = 0; k < chunks; k++)
        smm_move_bytes(rb + smm_r8_qs(type) + 32 * k + 4 * r, plain + smm_plain_qs(type) + 4 * k, 4, to_plain);
}

/* Repacks rows [0, rows / 8 * 8) of a plain weight `src` into `dst` (same size); the tail
 * rows are copied as they are. A linear pass: each source byte is read once. */
static void smm_r8_repack(int type, const uint8_t* src, ptrdiff_t rows, ptrdiff_t row_bytes, uint8_t* dst)
{
    const int bb = smm_block_bytes(type);
    const ptrdiff_t nb = row_bytes / bb, full = rows / 8 * 8;
    for (ptrdiff_t g = 0; g < full; g += 8) {
        uint8_t* out = dst + g * row_bytes;
        for (ptrdiff_t b = 0; b < nb; b++)
            for (int r = 0; r < 8; r++)
                smm_r8_move_block(type, out + b * 8 * bb, (uint8_t*)src + (g + r) * row_bytes + b * bb, r, 0);
    }
    memcpy(dst + full * row_bytes, src + full * row_bytes, (size_t)((rows - full) * row_bytes));
}

/* Row `row` of a repacked weight (plain type `type`) as float32. */
static void smm_r8_get_row(int type, const uint8_t* w, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t row_bytes,
                           ptrdiff_t row, float* out)
{
    if (row >= rows / 8 * 8) {
        smm_dequant_row(type, w + row * row_bytes, cols, out);
        return;
    }
    const int bb = smm_block_bytes(type), be = smm_block_elems(type);
    const uint8_t* group = w + (row & ~(ptrdiff_t)7) * row_bytes;
    uint8_t plain[256]; /* one plain block (210 bytes at most) */
    for (ptrdiff_t b = 0; b < cols / be; b++) {
        smm_r8_move_block(type, (uint8_t*)group + b * 8 * bb, plain, (int)(row & 7), 1);
        smm_dequant_row(type, plain, be, out + be * b);
    }
}

/* 4 activation codes (chunk j of block b) in every 32-bit lane. */
SMM_INLINE __m256i smm_r8_xchunk(const smm_act32* a, ptrdiff_t b, int j)
{
    return _mm256_set1_epi32((int)smm_ld32((const uint8_t*)a->q + 32 * b + 4 * j));
}

/*
 * Group g (8 repacked rows, nb blocks) x C activation rows: out[c] = the 8 rows' dot
 * products with activation row c, lane r = row r.
 */
SMM_INLINE void smm_r8_tile(const int type, const int V, const int C, const uint8_t* g, ptrdiff_t nb,
                            const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols, __m256 out[4])
{
    const int gbb = 8 * smm_block_bytes(type), qs = smm_r8_qs(type);
    const int has_min = smm_r8_has_min(type), five = smm_r8_five(type);
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
    smm_act32 a[4];
    __m256 acc[4];
#pragma GCC unroll 4
    for (int c = 0; c < C; c++) {
        a[c] = smm_act32_at(act + c * astride, cols);
        acc[c] = _mm256_setzero_ps();
    }
    for (ptrdiff_t b = 0; b < nb; b++) {
        const uint8_t* blk = g + b * gbb;
        /* 8 blocks ahead: the group is one sequential stream, but the loop body is long and
         * the hardware prefetchers alone kept too few lines in flight (1 thread on Zen 3,
         * 64 MB matrices: Q4_1 73% -> 94%, Q5_0 64% -> 87% of the read bandwidth) */
        for (int o = 0; o < gbb; o += 64) _mm_prefetch((const char*)(blk + 8 * gbb + o), _MM_HINT_T0);
        /* Chunk outer, activation rows inner: a chunk's unpacked codes serve the C rows while
         * in a register. The pins keep each row's sums a chain: GCC otherwise reassociated
         * them (integer adds), formed all 8C products first and spilled them (a 4-row tile
         * stored and reloaded ~60 ymm per block, 2.3x the time per row of 1 row) */
        __m256i isum[4];
        if (type == SMM_Q8_0) {
            /* With vpdpbusd (V, C >= 2 only): one instruction for maddubs + madd + add, in two
             * chains per activation row (even and odd chunks; below: chunks 0-3 and 4-7) so
             * that 2C of them are in flight against its latency of 4-5 cycles; one chain at
             * C = 1 would wait on it */
            __m256i odd[4];
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) isum[c] = odd[c] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const __m256i raw = _mm256_loadu_si256((const __m256i*)(blk + qs + 32 * j));
                const __m256i mag = _mm256_sign_epi8(raw, raw);
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    const __m256i x = _mm256_sign_epi8(smm_r8_xchunk(&a[c], b, j), raw);
                    if (V && j % 2) {
                        odd[c] = smm_dpbusd(V, odd[c], mag, x);
                        SMM_PIN(odd[c]);
                    } else if (V) {
                        isum[c] = smm_dpbusd(V, isum[c], mag, x);
                        SMM_PIN(isum[c]);
                    } else {
                        isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, x), ones));
                        if (C > 1) SMM_PIN(isum[c]);
                    }
                }
            }
            if (V)
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) isum[c] = _mm256_add_epi32(isum[c], odd[c]);
        } else {
            /* 4-bit codes: one int16 sum of the 8 chunks; 5-bit: chunks 0-3 and 4-7 each
             * summed and widened (pairs of sums of 8 chunks could overflow) */
            __m256i s16[4], odd[4]; /* with V: chunks 0-3 summed in isum, 4-7 in odd */
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) isum[c] = odd[c] = _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int half = 0; half < 2; half++) {
                if (half && !five) break;
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) s16[c] = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    __m256i lo, hi = _mm256_setzero_si256();
                    if (five) {
                        lo = smm_octet_code(blk + qs, k + 4 * half);
                    } else {
                        const __m256i raw = _mm256_loadu_si256((const __m256i*)(blk + qs + 32 * k));
                        lo = _mm256_and_si256(raw, m4);
                        hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                    }
#pragma GCC unroll 4
                    for (int c = 0; c < C; c++) {
                        const __m256i xl = smm_r8_xchunk(&a[c], b, k + 4 * half);
                        if (V) {
                            if (half) odd[c] = smm_dpbusd(V, odd[c], lo, xl);
                            else isum[c] = smm_dpbusd(V, isum[c], lo, xl);
                            if (!five) odd[c] = smm_dpbusd(V, odd[c], hi, smm_r8_xchunk(&a[c], b, k + 4));
                            SMM_PIN(isum[c]);
                            SMM_PIN(odd[c]);
                            continue;
                        }
                        const __m256i pl = _mm256_maddubs_epi16(lo, xl);
                        if (five) {
                            s16[c] = _mm256_add_epi16(s16[c], pl);
                        } else {
                            const __m256i ph = _mm256_maddubs_epi16(hi, smm_r8_xchunk(&a[c], b, k + 4));
                            s16[c] = _mm256_add_epi16(s16[c], _mm256_add_epi16(pl, ph));
                        }
                        if (C > 1) SMM_PIN(s16[c]);
                    }
                }
#pragma GCC unroll 4
                for (int c = 0; c < C && !V; c++) {
                    const __m256i wide = _mm256_madd_epi16(s16[c], ones);
                    isum[c] = half ? _mm256_add_epi32(isum[c], wide) : wide;
                }
            }
            if (V)
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) isum[c] = _mm256_add_epi32(isum[c], odd[c]);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                /* codes stored with an offset: sum((q - o) x) = sum(q x) - o sum(x) */
                if (type == SMM_Q4_0) isum[c] = _mm256_sub_epi32(isum[c], _mm256_set1_epi32(8 * a[c].sumq[b]));
                if (type == SMM_Q5_0) isum[c] = _mm256_sub_epi32(isum[c], _mm256_set1_epi32(16 * a[c].sumq[b]));
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)blk));
        __m256 m = _mm256_setzero_ps();
        if (has_min) m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(blk + 16)));
        /* With a min, the block's two terms (d sum(q x) and m sum(x)) mostly cancel: they are
         * combined before they reach the running sum, whose rounding then scales with the
         * block's value and not with the terms (kept apart, the sums' rounding errors were
         * several times larger: a 2-point drop in top-1 agreement of SmolLM2 Q4_1 with llama.cpp) */
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const __m256 s = _mm256_mul_ps(d, _mm256_broadcast_ss(a[c].d + b));
            if (has_min) {
                const __m256 block = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), s,
                                                     _mm256_mul_ps(m, _mm256_broadcast_ss(a[c].s + b)));
                acc[c] = _mm256_add_ps(acc[c], block);
            } else {
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), s, acc[c]);
            }
        }
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; c++) out[c] = acc[c];
}

/* One group x C activation rows for a run-time type and C (1..4); tiles of C >= 2 rows with
 * vpdpbusd in the form `vnni` (SMM_VNNI_*). */
static void smm_r8_tile_any(int type, int C, int vnni, const uint8_t* g, ptrdiff_t nb, const uint8_t* act,
                            ptrdiff_t astride, ptrdiff_t cols, __m256 out[4])
{
#define SMM_R8_CASES(T, V)                                                  \
    switch (C) {                                                            \
    case 4: smm_r8_tile(T, V, 4, g, nb, act, astride, cols, out); break;   \
    case 3: smm_r8_tile(T, V, 3, g, nb, act, astride, cols, out); break;   \
    case 2: smm_r8_tile(T, V, 2, g, nb, act, astride, cols, out); break;   \
    default: smm_r8_tile(T, 0, 1, g, nb, act, astride, cols, out); break;  \
    }
    switch (type) {
    case SMM_Q4_0: SMM_VNNI_SWITCH(vnni, SMM_R8_CASES, SMM_Q4_0) break;
    case SMM_Q4_1: SMM_VNNI_SWITCH(vnni, SMM_R8_CASES, SMM_Q4_1) break;
    case SMM_Q5_0: SMM_VNNI_SWITCH(vnni, SMM_R8_CASES, SMM_Q5_0) break;
    case SMM_Q5_1: SMM_VNNI_SWITCH(vnni, SMM_R8_CASES, SMM_Q5_1) break;
    default: SMM_VNNI_SWITCH(vnni, SMM_R8_CASES, SMM_Q8_0) break;
    }
#undef SMM_R8_CASES
}

#endif
