/*
 * Row-interleaved ("repacked at load") layouts of the K-quants Q4_K, Q5_K and Q6_K and their
 * AVX2 kernels: the K-quant counterpart of _matmul_r8.h (same idea as ik_llama.cpp's _R4/_R8
 * K types; our own layout and code).
 *
 * The plain K-quant kernels (_matmul_avx2.h) decoded each block's packed 6-bit scales and
 * mins per row (a third of a Q4_K block's instructions, some of them scalar, with
 * general-purpose -> vector moves), shuffled a scale per sub-block, and spent a maddubs and
 * a madd per 32 codes and row: compute-bound at 12-18 GB/s on Zen 3, against 30 for the
 * repacked Q4_1. Here 8 consecutive rows are rewritten, once when the Weight is built, so
 * that block b of the 8 rows is one "group block" of exactly 8 plain blocks' bytes:
 *
 *   Q4_K (1152 B)  f16 d[8] | f16 dmin[8] | LO[64] | HI[32] | codes[1024]
 *   Q5_K (1408 B)  f16 d[8] | f16 dmin[8] | LO[64] | HI[32] | codes[1280]
 *   Q6_K (1680 B)  f16 d[8] | i8 scales[128] | codes[1536]
 *
 * Codes: 32-byte vectors of 4 bytes per row (row r in 32-bit lane r). Q4_K vector (p, k)
 * (p = 0..3, k = 0..7) holds bytes 32p+4k..+3 of each row's qs: its low nibbles are
 * elements 4k..4k+3 of sub-block 2p, its high nibbles those of sub-block 2p+1. Q5_K's
 * 5-bit codes are in 8 octets of vectors P0..P4 (160 bytes) for the 8 code vectors A..H of
 * sub-block o (code vector 8o + m holds its elements 4m..4m+3): bytewise, P0..P4 = A..E |
 * (F & 7, F >> 3, G & 7, G >> 3, H & 7) << 5, and bit 7 of P1 and P3 = bits 3 and 4 of H, so
 * that A-E take one and, F and G five operations, H eight (2.9 per vector; the 4-bit codes
 * with a plane of fifth bits took 4.4). The repacked Q5_0/Q5_1 blocks hold one such octet.
 * Q6_K's 6-bit codes are in 16 triplets of vectors X | Y | Z (96 bytes) for 4 code vectors
 * A, B, C, D: X = A | C >> 4 << 6, Y = B | D >> 4 << 6, Z = (C & 15) | D << 4, bytewise, so
 * that A and B take one and, C and D four or five operations (2.75 per vector; a split into
 * 4-bit and 2-bit planes took 4.25). Code vector i (triplet i / 4, i % 4 = A..D) holds
 * elements 64(i/16) + 32(i/8 % 2) + 4(i % 8) + b (byte b of the row's lane).
 *
 * Scales: the sub-block scales (and mins) of a pair of sub-blocks (2t, 2t+1) of the 8 rows
 * are 16 values in "pair order", value i = row i/2, sub-block 2t + i%2: widened to int16
 * (one vpmovzxbw / vpmovsxbw), lane r is (scale of 2t, scale of 2t+1) of row r. That is
 * what madd needs against the activation's sums of the two sub-blocks (a 32-bit broadcast)
 * for the mins (Q4_K/Q5_K) and the code offset (Q6_K), and one in-lane byte shuffle gives
 * either sub-block's scale in both halves of every lane, for the madd that applies it to
 * the code products. Q6_K stores those 8 x 16 int8 scales as they are; Q4_K/Q5_K's 6-bit
 * scales and mins keep their 96 bytes per 8 rows: LO piece p (16 bytes) holds the low 4
 * bits of the scales of pair p (low nibbles) and of its mins (high nibbles), HI piece h the
 * high 2 bits of the scales of pair 2h, its mins, the scales of pair 2h+1 and its mins, in
 * bit pairs 0-1, 2-3, 4-5, 6-7. Decoding a pair's scales or mins is then 4 vector ops for 8
 * rows, and a group takes exactly the bytes of the 8 plain rows, so the 8-row framework of
 * _matmul_r8.h (groups at (r & ~7) * row_bytes, rows past the last group plain) is reused.
 *
 * Per group block, chunk (4 codes) and activation row: one broadcast of the activation's 4
 * codes, one maddubs against 8 rows, one int16 add; per sub-block one madd with its scales
 * (4-bit codes: pair sums <= 2*15*127, 8 chunks 30480; 5-bit: 4 chunks 31496; 6-bit: 2
 * chunks 32004, all < 32767, so no sum saturates and the integer dot is exact in any
 * order). The row sums are in separate lanes: a block ends with one conversion and one FMA
 * for 8 rows, and Q4_K/Q5_K's mins are an exact integer madd against the activation's sums
 * per 32 (bsp) converted once, combined with the block's code term before the running sum
 * (as _matmul_r8.h does for Q4_1). The kernel is the same for every n (tiles of 8 rows x C
 * <= 4 activation rows, the same float steps per (row, activation row) whatever C is;
 * prompts may take the codes ready-made from a panel, smm_rk_rows in _matmul_r8panel.h), so
 * a row's result does not depend on n or the thread count.
 *
 * AVX2 only, run on every ISA: the AVX-512 kernels (_matmul_k512.h) read the plain layout
 * and never see a repacked weight (smm_quant_rows sends SMM_R8 types here first).
 */
#ifndef SMALLMIND_MATMUL_RK_H
#define SMALLMIND_MATMUL_RK_H

#include "_matmul_avx2.h"

static inline int smm_rk_supported(int type) { return type == SMM_Q4_K || type == SMM_Q5_K || type == SMM_Q6_K; }

/* len bytes between a repacked group block (`packed`) and a plain block (`flat`): to_plain = 0
 * repacks, 1 restores (the moves of smm_rk_move_block and smm_r8_move_block). */
static inline void smm_move_bytes(uint8_t* packed, uint8_t* flat, size_t len, int to_plain)
{
    if (to_plain) memcpy(flat, packed, len);
    else memcpy(packed, flat, len);
}

/* Byte offsets in a group block. */
#define SMM_RK_LO 32
#define SMM_RK_HI 96
#define SMM_RK_Q6SC 16
static inline int smm_rk_codes(int type) { return type == SMM_Q6_K ? 144 : 128; }
/* Q6_K: the element (0..255) that byte b of a row's lane of code vector i holds. */
#define SMM_RK_Q6E(i, b) (64 * ((i) / 16) + 32 * ((i) / 8 % 2) + 4 * ((i) % 8) + (b))

/* Row and sub-block of value i (0..15) of pair t in pair order. */
#define SMM_RK_ROW(i) ((i) / 2)
#define SMM_RK_SUB(t, i) (2 * (t) + (i) % 2)

/* The 6-bit scales (mins = 0) or mins (1) of row r's 8 sub-blocks, to or from the packed
 * LO/HI bytes of a Q4_K/Q5_K group block. */
static void smm_rk_scales6(uint8_t* gb, int r, int mins, uint8_t v[8], int to_plain)
{
    for (int t = 0; t < 4; t++)
        for (int i = 2 * r; i < 2 * r + 2; i++) {
            uint8_t* lo = gb + SMM_RK_LO + 16 * t + i;
            uint8_t* hi = gb + SMM_RK_HI + 16 * (t / 2) + i;
            const int lshift = 4 * mins, hshift = 4 * (t % 2) + 2 * mins;
            if (to_plain) {
                v[SMM_RK_SUB(t, i)] = (uint8_t)(((*lo >> lshift) & 15) | (((*hi >> hshift) & 3) << 4));
            } else {
                *lo = (uint8_t)((*lo & ~(15 << lshift)) | ((v[SMM_RK_SUB(t, i)] & 15) << lshift));
                *hi = (uint8_t)((*hi & ~(3 << hshift)) | ((v[SMM_RK_SUB(t, i)] >> 4) << hshift));
            }
        }
}

/* Q6_K: a plain block's 256 6-bit codes (element order) to q (to_plain = 0) or from q. Element
 * 128h + 32j + l has its low 4 bits in nibble j / 2 of ql[64h + 32(j % 2) + l] and its high 2
 * in bits 2j of qh[32h + l]. */
static void smm_q6_plain_codes(uint8_t* blk, uint8_t q[256], int to_plain)
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            uint8_t *ql0 = blk + 64 * h + l, *ql1 = ql0 + 32, *qh = blk + 128 + 32 * h + l, *e = q + 128 * h + l;
            if (to_plain) {
                *ql0 = (uint8_t)((e[0] & 15) | (e[64] & 15) << 4);
                *ql1 = (uint8_t)((e[32] & 15) | (e[96] & 15) << 4);
                *qh = (uint8_t)((e[0] >> 4) | (e[32] >> 4) << 2 | (e[64] >> 4) << 4 | (e[96] >> 4) << 6);
            } else {
                e[0] = (uint8_t)((*ql0 & 15) | (*qh & 3) << 4);
                e[32] = (uint8_t)((*ql1 & 15) | (*qh >> 2 & 3) << 4);
                e[64] = (uint8_t)((*ql0 >> 4) | (*qh >> 4 & 3) << 4);
                e[96] = (uint8_t)((*ql1 >> 4) | (*qh >> 6) << 4);
            }
        }
}

/* Q6_K: the codes of row r between a plain block and the triplets of a group block. */
static void smm_rk_q6_move(uint8_t* gb, int r, uint8_t* plain, int to_plain)
{
    uint8_t q[256];
    if (!to_plain) smm_q6_plain_codes(plain, q, 0);
    for (int j = 0; j < 16; j++)
        for (int b = 0; b < 4; b++) {
            uint8_t *x = gb + smm_rk_codes(SMM_Q6_K) + 96 * j + 4 * r + b, *y = x + 32, *z = x + 64;
            uint8_t *qa = q + SMM_RK_Q6E(4 * j, b), *qb = q + SMM_RK_Q6E(4 * j + 1, b);
            uint8_t *qc = q + SMM_RK_Q6E(4 * j + 2, b), *qd = q + SMM_RK_Q6E(4 * j + 3, b);
            if (to_plain) {
                *qa = *x & 63;
                *qb = *y & 63;
                *qc = (uint8_t)((*z & 15) | (*x >> 6) << 4);
                *qd = (uint8_t)((*z >> 4) | (*y >> 6) << 4);
            } else {
                *x = (uint8_t)(*qa | (*qc >> 4) << 6);
                *y = (uint8_t)(*qb | (*qd >> 4) << 6);
                *z = (uint8_t)((*qc & 15) | (*qd & 15) << 4);
            }
        }
    if (to_plain) smm_q6_plain_codes(plain, q, 1);
}

/* Q5_K: a plain block's 256 5-bit codes (element order) to q (to_plain = 0) or from q. Element
 * 32s + l has its low 4 bits in nibble s % 2 of qs[32(s / 2) + l], its fifth in bit s of qh[l]. */
static void smm_q5_plain_codes(uint8_t* blk, uint8_t q[256], int to_plain)
{
    uint8_t *qh = blk + 16, *qs = blk + 48;
    if (to_plain) memset(qh, 0, 32);
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++) {
            uint8_t* b = qs + 32 * (s / 2) + l;
            if (to_plain) {
                *b = (uint8_t)(s % 2 ? (*b & 15) | (q[32 * s + l] & 15) << 4 : q[32 * s + l] & 15);
                qh[l] |= (uint8_t)((q[32 * s + l] >> 4) << s);
            } else {
                q[32 * s + l] = (uint8_t)((*b >> 4 * (s % 2) & 15) | (qh[l] >> s & 1) << 4);
            }
        }
}

/* One octet (160 bytes at p, the 5-bit codes of 8 rows x 32 elements; see the layout above):
 * row r's 32 codes, element order in q (member m, byte b = q[4m + b]), to it (to_plain = 0)
 * or from it. Shared by Q5_K (8 octets a block) and the repacked Q5_0/Q5_1 (_matmul_r8.h). */
static void smm_octet_move(uint8_t* p, int r, uint8_t* q, int to_plain)
{
    for (int b = 0; b < 4; b++) {
        uint8_t* x = p + 4 * r + b; /* P_j = x[32 j] */
        uint8_t* c = q + b;         /* member m = c[4 m] */
        if (to_plain) {
            for (int m = 0; m < 5; m++) c[4 * m] = x[32 * m] & 31;
            c[20] = (uint8_t)((x[0] >> 5) | (x[32] >> 5 & 3) << 3);
            c[24] = (uint8_t)((x[64] >> 5) | (x[96] >> 5 & 3) << 3);
            c[28] = (uint8_t)((x[128] >> 5) | (x[32] >> 7) << 3 | (x[96] >> 7) << 4);
        } else {
            x[0] = (uint8_t)(c[0] | (c[20] & 7) << 5);
            x[32] = (uint8_t)(c[4] | (c[20] >> 3) << 5 | (c[28] >> 3 & 1) << 7);
            x[64] = (uint8_t)(c[8] | (c[24] & 7) << 5);
            x[96] = (uint8_t)(c[12] | (c[24] >> 3) << 5 | (c[28] >> 4) << 7);
            x[128] = (uint8_t)(c[16] | (c[28] & 7) << 5);
        }
    }
}

/* Q5_K: the codes of row r between a plain block and the octets of a group block. */
static void smm_rk_q5_move(uint8_t* gb, int r, uint8_t* plain, int to_plain)
{
    uint8_t q[256];
    if (!to_plain) smm_q5_plain_codes(plain, q, 0);
    for (int o = 0; o < 8; o++)
        smm_octet_move(gb + smm_rk_codes(SMM_Q5_K) + 160 * o, r, q + 32 * o, to_plain);
    if (to_plain) smm_q5_plain_codes(plain, q, 1);
}

/* Moves block b of row r (0..7) between the plain layout (`plain`, one block) and the group
 * block `gb`: to_plain = 0 repacks, 1 restores. */
static void smm_rk_move_block(int type, uint8_t* gb, uint8_t* plain, int r, int to_plain)
{
    if (type == SMM_Q6_K) {
        smm_move_bytes(gb + 2 * r, plain + 208, 2, to_plain);
        for (int t = 0; t < 8; t++) smm_move_bytes(gb + SMM_RK_Q6SC + 16 * t + 2 * r, plain + 192 + 2 * t, 2, to_plain);
        smm_rk_q6_move(gb, r, plain, to_plain);
        return;
    }
    smm_move_bytes(gb + 2 * r, plain, 2, to_plain);
    smm_move_bytes(gb + 16 + 2 * r, plain + 2, 2, to_plain);
    uint8_t sc[8], mn[8];
    if (to_plain) {
        smm_rk_scales6(gb, r, 0, sc, 1);
        smm_rk_scales6(gb, r, 1, mn, 1);
        uint8_t* p = plain + 4; /* the inverse of smm_k_scale_min */
        for (int j = 0; j < 4; j++) {
            p[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
            p[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
            p[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
        }
    } else {
        for (int j = 0; j < 8; j++) {
            int s, m;
            smm_k_scale_min(plain + 4, j, &s, &m);
            sc[j] = (uint8_t)s;
            mn[j] = (uint8_t)m;
        }
        smm_rk_scales6(gb, r, 0, sc, 0);
        smm_rk_scales6(gb, r, 1, mn, 0);
    }
    if (type == SMM_Q5_K) smm_rk_q5_move(gb, r, plain, to_plain);
    else
        for (int v = 0; v < 32; v++)
            smm_move_bytes(gb + smm_rk_codes(type) + 32 * v + 4 * r, plain + 16 + 4 * v, 4, to_plain);
}

/* ------------------------------------------------------------------------------------
 * Kernel. The running integer sums are pinned (SMM_PIN, _matmul_avx2.h) after every add:
 * unpinned, GCC reassociated a block's 32 madd results into a tree, spilled them (30 ymm
 * stores and reloads per Q6_K block) and the kernel ran at half its op count's rate.
 * ---------------------------------------------------------------------------------- */

/* The activation's 4 codes at element e of block b in every 32-bit lane. */
SMM_INLINE __m256i smm_rk_x(const smm_actk* a, ptrdiff_t b, int e)
{
    return _mm256_set1_epi32((int)smm_ld32((const uint8_t*)a->q + 256 * b + e));
}

/* Two int16 sums of the activation at consecutive indices (a sub-block pair's) in every lane. */
SMM_INLINE __m256i smm_rk_pair(const int16_t* s) { return _mm256_set1_epi32((int)smm_ld32((const uint8_t*)s)); }

/* Q4_K/Q5_K: the int16 scales (mins = 0) or mins (1) of pair t in pair order. */
SMM_INLINE __m256i smm_rk_pair6(const uint8_t* gb, const int t, const int mins)
{
    const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(gb + SMM_RK_LO + 16 * t)));
    const __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(gb + SMM_RK_HI + 16 * (t / 2))));
    const int hs = 4 * (t % 2) + 2 * mins; /* the bit pair at hs, moved to bits 4-5 */
    const __m256i h = hs < 4 ? _mm256_slli_epi16(hi, 4 - hs) : hs > 4 ? _mm256_srli_epi16(hi, hs - 4) : hi;
    const __m256i l = mins ? _mm256_srli_epi16(lo, 4) : _mm256_and_si256(lo, _mm256_set1_epi16(15));
    return _mm256_or_si256(l, _mm256_and_si256(h, _mm256_set1_epi16(0x30)));
}

/* Sub-block (2t + odd)'s scale of each row in both int16 halves of its lane, from pair order. */
SMM_INLINE __m256i smm_rk_scale(__m256i pair, const int odd)
{
    const __m256i even = _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13,
                                          0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13);
    return _mm256_shuffle_epi8(pair, odd ? _mm256_add_epi8(even, _mm256_set1_epi8(2)) : even);
}

/* Q4_K codes of vector (p, k), sub-block 2p + hi, as bytes for maddubs. */
SMM_INLINE __m256i smm_rk_q4(const uint8_t* gb, const int p, const int k, const int hi)
{
    const __m256i v = _mm256_loadu_si256((const __m256i*)(gb + smm_rk_codes(SMM_Q4_K) + 32 * (8 * p + k)));
    return _mm256_and_si256(hi ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0F));
}

/* Member m (0..7) of the octet at o as bytes: A-E (m < 5) are the low 5 bits of P0-P4, F, G
 * and H gathered from their top 3 bits (see the layout above). */
SMM_INLINE __m256i smm_octet_code(const uint8_t* o, const int m)
{
#define SMM_RK_P(j) _mm256_loadu_si256((const __m256i*)(o + 32 * (j)))
#define SMM_RK_BITS(v, shift, mask) _mm256_and_si256(_mm256_srli_epi16(v, shift), _mm256_set1_epi8(mask))
    if (m < 5) return _mm256_and_si256(SMM_RK_P(m), _mm256_set1_epi8(0x1F));
    if (m < 7) return _mm256_or_si256(SMM_RK_BITS(SMM_RK_P(2 * m - 10), 5, 0x07), SMM_RK_BITS(SMM_RK_P(2 * m - 9), 2, 0x18));
    return _mm256_or_si256(SMM_RK_BITS(SMM_RK_P(4), 5, 0x07),
                           _mm256_or_si256(SMM_RK_BITS(SMM_RK_P(1), 4, 0x08), SMM_RK_BITS(SMM_RK_P(3), 3, 0x10)));
#undef SMM_RK_BITS
#undef SMM_RK_P
}

/* Q5_K code vector i (octet i / 8, member i % 8). */
SMM_INLINE __m256i smm_rk_q5(const uint8_t* gb, const int i)
{
    return smm_octet_code(gb + smm_rk_codes(SMM_Q5_K) + 160 * (i / 8), i % 8);
}

/* Q6_K code vector i as bytes: A and B (i % 4 = 0, 1) are the low 6 bits of X and Y, C and D
 * (2, 3) the nibbles of Z with the high 2 bits of X and Y (see the layout above). */
SMM_INLINE __m256i smm_rk_q6(const uint8_t* gb, const int i)
{
    const uint8_t* t = gb + smm_rk_codes(SMM_Q6_K) + 96 * (i / 4);
    const __m256i x = _mm256_loadu_si256((const __m256i*)(t + 32 * (i % 2)));
    if (i % 4 < 2) return _mm256_and_si256(x, _mm256_set1_epi8(0x3F));
    __m256i z = _mm256_loadu_si256((const __m256i*)(t + 64));
    z = _mm256_and_si256(i % 2 ? _mm256_srli_epi16(z, 4) : z, _mm256_set1_epi8(0x0F));
    return _mm256_or_si256(z, _mm256_and_si256(_mm256_srli_epi16(x, 2), _mm256_set1_epi8(0x30)));
}

/* The 64 code vectors of a group block in the order the tile consumes them, as bytes for
 * maddubs: Q4_K/Q5_K i = 16p + 8hi + k (vector (p, k), sub-block 2p + hi), Q6_K i = 8t + k
 * (elements 32t + 4k.., sub-block 2t + k / 4). */
SMM_INLINE __m256i smm_rk_code(const int type, const uint8_t* gb, const int i)
{
    if (type == SMM_Q6_K) return smm_rk_q6(gb, i);
    if (type == SMM_Q5_K) return smm_rk_q5(gb, i);
    return smm_rk_q4(gb, i / 16, i % 8, i / 8 % 2);
}

#define SMM_RK_PREFETCH 6

/*
 * Group g (8 repacked rows) x C activation rows over blocks [b0, b0 + nbk): acc[c] (lane r =
 * row r) carries the running sums of activation row c in and out. P: the codes come from
 * `panel` (64 vectors per block from b0, smm_rk_code's order and values) instead of being
 * unpacked here; the operations on them are the same.
 */
SMM_INLINE void smm_rk_tile(const int type, const int C, const int P, const __m256i* panel, const uint8_t* g,
                            ptrdiff_t b0, ptrdiff_t nbk, const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols,
                            __m256 acc[4])
{
    const int gbb = 8 * smm_block_bytes(type), has_min = type != SMM_Q6_K;
    smm_actk a[4];
#pragma GCC unroll 4
    for (int c = 0; c < C; c++) a[c] = smm_actk_at(act + c * astride, cols);
    for (ptrdiff_t b = b0; b < b0 + nbk; b++) {
        const uint8_t* gb = g + b * gbb;
        const __m256i* pb = panel + 64 * (b - b0);
        /* 6 group blocks ahead (7-10 KB), into L2: see smm_r8_tile on why the stream needs a
         * software prefetch. Into L1 at 2 blocks, Q4_K streamed 64 MB at 15.6 GB/s where
         * the read loop did 21 (1 thread, Zen 3); into L2 at 4-6 blocks, 19.3-19.6 */
        if (!P)
            for (int o = 0; o < gbb; o += 64) _mm_prefetch((const char*)(gb + SMM_RK_PREFETCH * gbb + o), _MM_HINT_T1);
        __m256i isum[4], s16[4];
        if (type == SMM_Q6_K) {
            /* 16 sub-blocks of 16: two chunks per int16 sum, a madd with the sub-block's scales
             * per two chunks; pair t of scales serves sub-blocks 2t, 2t+1, whose codes are
             * code vectors 8t..8t+3 and 8t+4..8t+7 */
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) isum[c] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                const __m256i pair = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(gb + SMM_RK_Q6SC + 16 * t)));
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) { /* the codes' offset of 32: -32 sum(scale * bsum) */
                    const __m256i off = _mm256_madd_epi16(pair, smm_rk_pair(a[c].bsum + 16 * b + 2 * t));
                    isum[c] = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(off, 5));
                    SMM_PIN(isum[c]);
                }
#pragma GCC unroll 2
                for (int odd = 0; odd < 2; odd++) {
                    const __m256i sc = smm_rk_scale(pair, odd);
#pragma GCC unroll 2
                    for (int half = 0; half < 2; half++) {
#pragma GCC unroll 2
                        for (int kk = 0; kk < 2; kk++) {
                            const int k = 4 * odd + 2 * half + kk, e = 64 * (t / 2) + 32 * (t % 2) + 4 * k;
                            const __m256i q = P ? pb[8 * t + k] : smm_rk_code(type, gb, 8 * t + k);
#pragma GCC unroll 4
                            for (int c = 0; c < C; c++) {
                                const __m256i p = _mm256_maddubs_epi16(q, smm_rk_x(&a[c], b, e));
                                s16[c] = kk ? _mm256_add_epi16(s16[c], p) : p;
                                SMM_PIN(s16[c]);
                            }
                        }
#pragma GCC unroll 4
                        for (int c = 0; c < C; c++) {
                            isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s16[c], sc));
                            SMM_PIN(isum[c]);
                        }
                    }
                }
            }
        } else {
            /* pair p: sub-blocks 2p (low nibbles) and 2p + 1 (high), 8 chunks each; 5-bit
             * codes in two int16 sums of 4 chunks */
            const int per = type == SMM_Q5_K ? 4 : 8;
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) isum[c] = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int p = 0; p < 4; p++) {
                const __m256i pair = smm_rk_pair6(gb, p, 0);
#pragma GCC unroll 2
                for (int hi = 0; hi < 2; hi++) {
                    const __m256i sc = smm_rk_scale(pair, hi);
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++) {
                        const __m256i q = P ? pb[16 * p + 8 * hi + k] : smm_rk_code(type, gb, 16 * p + 8 * hi + k);
#pragma GCC unroll 4
                        for (int c = 0; c < C; c++) {
                            const __m256i prod = _mm256_maddubs_epi16(q, smm_rk_x(&a[c], b, 32 * (2 * p + hi) + 4 * k));
                            s16[c] = k % per ? _mm256_add_epi16(s16[c], prod) : prod;
                            SMM_PIN(s16[c]);
                            if (k % per == per - 1) {
                                isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s16[c], sc));
                                SMM_PIN(isum[c]);
                            }
                        }
                    }
                }
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)gb));
        if (has_min) {
            /* mins: sum over the pairs of madd(mins, the activation's sums per 32), exact */
            const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(gb + 16)));
            __m256i msum[4];
#pragma GCC unroll 4
            for (int p = 0; p < 4; p++) {
                const __m256i mins = smm_rk_pair6(gb, p, 1);
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    const __m256i m = _mm256_madd_epi16(mins, smm_rk_pair(a[c].bsp + 8 * b + 2 * p));
                    msum[c] = p ? _mm256_add_epi32(msum[c], m) : m;
                    SMM_PIN(msum[c]);
                }
            }
            /* the block's two terms mostly cancel: combined before the running sum (as Q4_1) */
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                const __m256 dx = _mm256_broadcast_ss(a[c].d + b);
                const __m256 mterm = _mm256_mul_ps(_mm256_cvtepi32_ps(msum[c]), _mm256_mul_ps(dmin, dx));
                const __m256 blockv = _mm256_fmsub_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_mul_ps(d, dx), mterm);
                acc[c] = _mm256_add_ps(acc[c], blockv);
            }
        } else {
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) {
                const __m256 s = _mm256_mul_ps(d, _mm256_broadcast_ss(a[c].d + b));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), s, acc[c]);
            }
        }
    }
}

/* One group x C activation rows (1..4) for a run-time K type, blocks [b0, b0 + nbk), codes
 * from `panel` when not NULL. */
static void smm_rk_tile_any(int type, int C, const __m256i* panel, const uint8_t* g, ptrdiff_t b0, ptrdiff_t nbk,
                            const uint8_t* act, ptrdiff_t astride, ptrdiff_t cols, __m256 acc[4])
{
#define SMM_RK_C(T, P)                                                                        \
    switch (C) {                                                                              \
    case 4: smm_rk_tile(T, 4, P, panel, g, b0, nbk, act, astride, cols, acc); break;         \
    case 3: smm_rk_tile(T, 3, P, panel, g, b0, nbk, act, astride, cols, acc); break;         \
    case 2: smm_rk_tile(T, 2, P, panel, g, b0, nbk, act, astride, cols, acc); break;         \
    default: smm_rk_tile(T, 1, P, panel, g, b0, nbk, act, astride, cols, acc); break;        \
    }
#define SMM_RK_CASES(T)            \
    if (panel) SMM_RK_C(T, 1)      \
    else SMM_RK_C(T, 0)
    switch (type) {
    case SMM_Q4_K: SMM_RK_CASES(SMM_Q4_K) break;
    case SMM_Q5_K: SMM_RK_CASES(SMM_Q5_K) break;
    default: SMM_RK_CASES(SMM_Q6_K) break;
    }
#undef SMM_RK_CASES
#undef SMM_RK_C
}

/* Blocks [b0, b0 + nbk) of group g unpacked into panel (64 code vectors per block). */
static void smm_rk_unpack(int type, const uint8_t* g, ptrdiff_t b0, ptrdiff_t nbk, __m256i* panel)
{
    const int gbb = 8 * smm_block_bytes(type);
    for (ptrdiff_t b = 0; b < nbk; b++) {
        const uint8_t* gb = g + (b0 + b) * gbb;
        switch (type) {
        case SMM_Q4_K: for (int i = 0; i < 64; i++) panel[64 * b + i] = smm_rk_code(SMM_Q4_K, gb, i); break;
        case SMM_Q5_K: for (int i = 0; i < 64; i++) panel[64 * b + i] = smm_rk_code(SMM_Q5_K, gb, i); break;
        default: for (int i = 0; i < 64; i++) panel[64 * b + i] = smm_rk_code(SMM_Q6_K, gb, i); break;
        }
    }
}

#endif
