/*
 * Matrix products y[t, r] (+)= dot(W[r, :], x[t, :]) (+ bias[r]) for every weight type,
 * threading and scratch management. Called by _matmul.pyx without the GIL.
 *
 * Strategy per weight family:
 *   float (F32/F16/BF16), n < SMM_GEMM_MIN_N: one weight row at a time (AVX2; 4 with
 *       AVX-512) against every activation row (W read from memory once, as one prefetched
 *       stream; memory bound for decoding).
 *   float, n >= SMM_GEMM_MIN_N: packed GEMM with a register-blocked micro-kernel
 *       (AVX2 4x24, AVX-512 8x48).
 *   quantised: activations quantised to int8 blocks into scratch, then integer dot
 *       products over tiles of weight rows x activation rows (4x1 for decoding, 4x4
 *       or 2x4 for prompts); AVX-512 kernels in _matmul_q512.h / _matmul_k512.h, AVX2
 *       ones in _matmul_avx2.h; weights repacked into 8-row groups in _matmul_r8.h
 *       (K-quants _matmul_rk.h; decoding, batch steps) and _matmul_r8panel.h (prompts).
 * Threads split the weight rows into chunks handed out by the pool in _threadpool.h, where
 * the calling thread takes chunks too and never waits for a worker that has not started
 * (OpenMP's end-of-region barrier did, which ruined 2 threads on a busy 2-core machine).
 * n_threads <= 1 (or a small matrix) never touches the pool.
 */
#ifndef SMALLMIND_MATMUL_IMPL_H
#define SMALLMIND_MATMUL_IMPL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "_simd_dispatch.h"
#include "_quant.h"
#include "_matmul_avx2.h"
#include "_matmul_r8.h"
#include "_matmul_avx512.h"
#include "_threadpool.h"

/* Below this many weight elements a second thread costs more than it saves. */
#define SMM_MIN_PARALLEL_ELEMS 65536
/* Activation rows from which the packed float GEMM beats the row-at-a-time kernel. */
#define SMM_GEMM_MIN_N 8
/* Activation rows packed at once by the float GEMM (a multiple of both MRs). */
#define SMM_GEMM_MC 192
/* Chunks per thread: enough that the caller can absorb the share of a worker that is late
 * (descheduled), few enough that claiming one (an atomic CAS) stays negligible. */
#ifndef SMM_CHUNKS_PER_THREAD
#define SMM_CHUNKS_PER_THREAD 8
#endif

typedef struct {
    int type;
    const uint8_t* w;
    ptrdiff_t rows, cols, row_bytes;
    const float* x;
    ptrdiff_t n, ldx;
    float* y;
    ptrdiff_t ldy;
    const float* bias;
    int accumulate;
    uint8_t* scratch; /* 64-byte aligned */
    int isa;
    int vnni; /* smm_vnni_active when the job was made (SMM_VNNI_*) */
    ptrdiff_t gemm_t0; /* float GEMM: first activation row of the packed block */
} smm_job;

/* Stores out[i][c] into y[t + c, r + i] for i < R, c < C. */
static inline __attribute__((always_inline)) void smm_store_tile(const smm_job* j, float out[4][4], ptrdiff_t r,
                                                                 ptrdiff_t t, int R, int C)
{
    for (int c = 0; c < C; c++) {
        float* yt = j->y + (t + c) * j->ldy + r;
        for (int i = 0; i < R; i++) smm_store1(yt + i, out[i][c], j->bias, r + i, j->accumulate);
    }
}

/* Activation rows handled per pass over a chunk's weight rows: the quantised
 * activations of a chunk (plus a tile of weights) stay in L2 while every weight tile
 * runs against them; unchunked, long prompts lost a third of the speed (measured
 * n = 1024 against n = 64). */
#define SMM_ACT_CHUNK 256

#include "_matmul_q512.h"
#include "_matmul_qk.h"
#include "_matmul_r8panel.h"


static ptrdiff_t smm_scratch_bytes(int type, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t n)
{
    (void)rows;
    int fam = smm_family(type);
    if (n <= 0 || cols <= 0) return 0;
    if (fam == SMM_FAMILY_FLOAT) {
        if (n < SMM_GEMM_MIN_N) return 0;
        ptrdiff_t mc = n < SMM_GEMM_MC ? (n + 7) / 8 * 8 : SMM_GEMM_MC;
        return mc * cols * 4 + 64;
    }
    return n * smm_act_stride(fam, cols) + 64;
}

/* ------------------------------------------------------------------------------------
 * Float weights
 * ---------------------------------------------------------------------------------- */

/* Rows [r, r + nvalid) of a float weight at w against every activation row, with the
 * 4-row kernel FN (AVX2 or AVX-512) instantiated for the weight's storage type. */
#define SMM_FLOAT_ROWS4(FN, j, w, nvalid, r)                                                              \
    switch ((j)->type) {                                                                                  \
    case SMM_F32:                                                                                         \
        FN(SMM_F32, w, (j)->row_bytes, nvalid, (j)->cols, (j)->x, (j)->n, (j)->ldx, (j)->y, (j)->ldy,     \
           (j)->bias, r, (j)->accumulate);                                                                \
        break;                                                                                            \
    case SMM_F16:                                                                                         \
        FN(SMM_F16, w, (j)->row_bytes, nvalid, (j)->cols, (j)->x, (j)->n, (j)->ldx, (j)->y, (j)->ldy,     \
           (j)->bias, r, (j)->accumulate);                                                                \
        break;                                                                                            \
    default:                                                                                              \
        FN(SMM_BF16, w, (j)->row_bytes, nvalid, (j)->cols, (j)->x, (j)->n, (j)->ldx, (j)->y, (j)->ldy,    \
           (j)->bias, r, (j)->accumulate);                                                                \
        break;                                                                                            \
    }

/* Row groups [g0, g1) (4 rows each): the loop body of smm_float_small_range. */
#define SMM_FLOAT_GROUPS(FN, j, g0, g1)                                  \
    for (ptrdiff_t g = g0; g < g1; g++) {                                \
        ptrdiff_t r = 4 * g;                                             \
        int nvalid = (int)((j)->rows - r < 4 ? (j)->rows - r : 4);       \
        const uint8_t* w = (j)->w + r * (j)->row_bytes;                  \
        SMM_FLOAT_ROWS4(FN, j, w, nvalid, r)                             \
    }

SMM_AVX512_TARGET static void smm_float_small_512(const smm_job* j, ptrdiff_t g0, ptrdiff_t g1)
{
    SMM_FLOAT_GROUPS(smm_float_rows4_512, j, g0, g1)
}

/* Float matrices above this many bytes take the one-stream-per-row AVX2 kernel on every
 * ISA (they come from memory: a prefetched sequential stream keeps it busy, and wider
 * vectors add nothing to a stream); smaller ones, which stay in cache between calls, the
 * 4-row one of the ISA (the seed model's 128 x 384 F32 matvec: 1.7x faster than the stream).
 * Either way a matrix always takes the same kernel, whatever n is. Tests move it. */
static ptrdiff_t smm_float_stream_min_bytes = (ptrdiff_t)1 << 20;

/* Weight row groups [g0, g1) (4 rows each) against every activation row. */
static void smm_float_small_range(const smm_job* j, ptrdiff_t g0, ptrdiff_t g1)
{
    if (j->rows * j->row_bytes > smm_float_stream_min_bytes)
        smm_float_rows_avx2(j->type, j->w, j->row_bytes, 4 * g0, 4 * g1 < j->rows ? 4 * g1 : j->rows, j->cols,
                            j->x, j->n, j->ldx, j->y, j->ldy, j->bias, j->accumulate);
    else if (j->isa >= SMM_ISA_AVX512) smm_float_small_512(j, g0, g1);
    else SMM_FLOAT_GROUPS(smm_float_rows4_avx2, j, g0, g1)
}

typedef void (*smm_ukr_fn)(ptrdiff_t, const float*, const float*, float*, ptrdiff_t, int, int, int,
                           const float*);

static void smm_pack_w_any(int type, const uint8_t* w, ptrdiff_t wstride, int nr, int NR, ptrdiff_t k0,
                           ptrdiff_t kc, float* Bp)
{
    if (type == SMM_F32) smm_pack_w(SMM_F32, w, wstride, nr, NR, k0, kc, Bp);
    else if (type == SMM_F16) smm_pack_w(SMM_F16, w, wstride, nr, NR, k0, kc, Bp);
    else smm_pack_w(SMM_BF16, w, wstride, nr, NR, k0, kc, Bp);
}

#define SMM_GEMM_MR(avx512) ((avx512) ? 8 : 4)
#define SMM_GEMM_NR(avx512) ((avx512) ? 48 : 24)

/* Packs the activation tiles [tile0, tile1) (MR rows each) of the block at gemm_t0 into
 * scratch: a phase of its own, finished before any panel reads it. */
static void smm_float_gemm_pack(const smm_job* j, ptrdiff_t tile0, ptrdiff_t tile1)
{
    const int MR = SMM_GEMM_MR(j->isa >= SMM_ISA_AVX512);
    float* Ap = (float*)j->scratch;
    for (ptrdiff_t tile = tile0; tile < tile1; tile++) {
        ptrdiff_t t = j->gemm_t0 + tile * MR;
        int mr = (int)(j->n - t < MR ? j->n - t : MR);
        smm_pack_x(j->x + t * j->ldx, j->ldx, mr, MR, j->cols, Ap + tile * MR * j->cols);
    }
}

/* Weight panels [p0, p1) (NR rows each) against the packed activation block at gemm_t0. */
static void smm_float_gemm_range(const smm_job* j, ptrdiff_t p0, ptrdiff_t p1)
{
    const int avx512 = j->isa >= SMM_ISA_AVX512;
    const int MR = SMM_GEMM_MR(avx512), NR = SMM_GEMM_NR(avx512);
    const ptrdiff_t KC = avx512 ? 128 : 256;
    const smm_ukr_fn ukr = avx512 ? smm_gemm_ukr_avx512 : smm_gemm_ukr_avx2;
    const ptrdiff_t cols = j->cols, t0 = j->gemm_t0;
    const float* Ap = (const float*)j->scratch;
    float Bp[256 * 48] __attribute__((aligned(64))); /* KC*NR floats for either ISA */
    ptrdiff_t mc = j->n - t0 < SMM_GEMM_MC ? j->n - t0 : SMM_GEMM_MC;
    ptrdiff_t ntiles = (mc + MR - 1) / MR;
    for (ptrdiff_t p = p0; p < p1; p++) {
        ptrdiff_t r = p * NR;
        int nr = (int)(j->rows - r < NR ? j->rows - r : NR);
        const uint8_t* w = j->w + r * j->row_bytes;
        for (ptrdiff_t k0 = 0; k0 < cols; k0 += KC) {
            ptrdiff_t kc = cols - k0 < KC ? cols - k0 : KC;
            int load_c = k0 > 0 || j->accumulate;
            const float* bias = (k0 + kc == cols && j->bias) ? j->bias + r : NULL;
            smm_pack_w_any(j->type, w, j->row_bytes, nr, NR, k0, kc, Bp);
            for (ptrdiff_t tile = 0; tile < ntiles; tile++) {
                ptrdiff_t t = t0 + tile * MR;
                int mr = (int)(j->n - t < MR ? j->n - t : MR);
                ukr(kc, Ap + tile * MR * cols + k0 * MR, Bp, j->y + t * j->ldy + r, j->ldy, mr, nr, load_c, bias);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------
 * Quantised weights
 * ---------------------------------------------------------------------------------- */

/* One tile, R weight rows x C activation rows, with the AVX2 kernels. */
#define SMM_TILE_CASES(FN, T, w, ws, a, as, cols, out) \
    switch (R * 8 + C) {                                        \
    case 4 * 8 + 1: FN(T, 4, 1, w, ws, a, as, cols, out); break; \
    case 4 * 8 + 2: FN(T, 4, 2, w, ws, a, as, cols, out); break; \
    case 2 * 8 + 4: FN(T, 2, 4, w, ws, a, as, cols, out); break; \
    case 2 * 8 + 1: FN(T, 2, 1, w, ws, a, as, cols, out); break; \
    case 1 * 8 + 4: FN(T, 1, 4, w, ws, a, as, cols, out); break; \
    default: FN(T, 1, 1, w, ws, a, as, cols, out); break;        \
    }

static void smm_q_tile_avx2(int type, int R, int C, const uint8_t* w, ptrdiff_t ws, const uint8_t* a,
                            ptrdiff_t as, ptrdiff_t cols, float out[4][4])
{
    switch (type) {
    case SMM_Q4_0: SMM_TILE_CASES(smm_q32_tile_avx2, SMM_Q4_0, w, ws, a, as, cols, out); break;
    case SMM_Q4_1: SMM_TILE_CASES(smm_q32_tile_avx2, SMM_Q4_1, w, ws, a, as, cols, out); break;
    case SMM_Q5_0: SMM_TILE_CASES(smm_q32_tile_avx2, SMM_Q5_0, w, ws, a, as, cols, out); break;
    case SMM_Q5_1: SMM_TILE_CASES(smm_q32_tile_avx2, SMM_Q5_1, w, ws, a, as, cols, out); break;
    case SMM_Q8_0: SMM_TILE_CASES(smm_q32_tile_avx2, SMM_Q8_0, w, ws, a, as, cols, out); break;
    }
}

static void smm_q_tile(const smm_job* j, int R, int C, ptrdiff_t r, ptrdiff_t t, const uint8_t* act,
                       ptrdiff_t astride)
{
    float out[4][4];
    smm_q_tile_avx2(j->type, R, C, j->w + r * j->row_bytes, j->row_bytes, act + t * astride, astride, j->cols, out);
    smm_store_tile(j, out, r, t, R, C);
}

/* Rows [r0, r1) of a plain W against all activation rows of job j, with the AVX2 kernels. */
static void smm_quant_rows_avx2(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    if (smm_family(j->type) == SMM_FAMILY_QK) {
        smm_qk_rows(j, r0, r1, act, astride);
        return;
    }
    if (j->n == 1) {
        ptrdiff_t r = r0;
        for (; r + 4 <= r1; r += 4) smm_q_tile(j, 4, 1, r, 0, act, astride);
        for (; r < r1; r++) smm_q_tile(j, 1, 1, r, 0, act, astride);
        return;
    }
    /* Groups of 4 weight rows: 2x4 tiles for the activation rows in fours, then 4x2 and 4x1
     * tiles for the 1-3 left (their weights now in L1). 2x1 tiles unpacked every weight block
     * once per activation row and two rows at a time, which made n = 2 slower than two
     * products of one row (a batch of 2 sequences, measured). */
    const ptrdiff_t n4 = j->n / 4 * 4;
    ptrdiff_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        ptrdiff_t t = 0;
        for (; t < n4; t += 4) {
            smm_q_tile(j, 2, 4, r, t, act, astride);
            smm_q_tile(j, 2, 4, r + 2, t, act, astride);
        }
        for (; t + 2 <= j->n; t += 2) smm_q_tile(j, 4, 2, r, t, act, astride);
        if (t < j->n) smm_q_tile(j, 4, 1, r, t, act, astride);
    }
    for (; r + 2 <= r1; r += 2) {
        ptrdiff_t t = 0;
        for (; t + 4 <= j->n; t += 4) smm_q_tile(j, 2, 4, r, t, act, astride);
        for (; t < j->n; t++) smm_q_tile(j, 2, 1, r, t, act, astride);
    }
    for (; r < r1; r++) {
        ptrdiff_t t = 0;
        for (; t + 4 <= j->n; t += 4) smm_q_tile(j, 1, 4, r, t, act, astride);
        for (; t < j->n; t++) smm_q_tile(j, 1, 1, r, t, act, astride);
    }
}

/* Rows [r0, r1) of a repacked W (r0 a multiple of 8) against all activation rows: the
 * whole 8-row groups in _matmul_r8panel.h, then the rows past the last group with the
 * plain AVX2 kernel, whatever the ISA (the activations are in the AVX2 layout). */
static void smm_r8_rows(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    const ptrdiff_t full = j->rows / 8 * 8, r = r1 < full ? r1 / 8 * 8 : full;
    if (r > r0) smm_r8_groups(j, r0, r, act, astride);
    if (r < r1) {
        smm_job tail = *j;
        tail.type = j->type & ~SMM_R8;
        smm_quant_rows_avx2(&tail, r > r0 ? r : r0, r1, act, astride);
    }
}

/* Rows [r0, r1) of W against all activation rows of job j. Repacked weights (SMM_R8, every
 * ISA) go to their AVX2 kernels before anything else: the AVX-512 kernels read the plain
 * layout only, and smm_q_range_avx512 switches on the whole type, flag included, so no
 * repacked type could match one of its cases anyway. */
static void smm_quant_rows(const smm_job* j, ptrdiff_t r0, ptrdiff_t r1, const uint8_t* act, ptrdiff_t astride)
{
    if (j->type & SMM_R8) smm_r8_rows(j, r0, r1, act, astride);
    else if (j->isa < SMM_ISA_AVX512 || !smm_q_range_avx512(j, r0, r1, act, astride))
        smm_quant_rows_avx2(j, r0, r1, act, astride);
}

/* Rows per unit of work of a quantised product: the repacked kernels' 8-row groups, else
 * the 4 rows of the widest plain tile. Thread chunks are whole units. */
static inline ptrdiff_t smm_unit_rows(int type) { return type & SMM_R8 ? 8 : 4; }
static inline ptrdiff_t smm_units(int type, ptrdiff_t rows) { return (rows + smm_unit_rows(type) - 1) / smm_unit_rows(type); }

/* Weight row units [g0, g1) (smm_unit_rows each) against the quantised activations in scratch. */
static void smm_quant_range(const smm_job* j, ptrdiff_t g0, ptrdiff_t g1)
{
    const ptrdiff_t astride = smm_act_stride(smm_family(j->type), j->cols), u = smm_unit_rows(j->type);
    ptrdiff_t r0 = g0 * u, r1 = g1 * u < j->rows ? g1 * u : j->rows;
    for (ptrdiff_t t0 = 0; t0 < j->n; t0 += SMM_ACT_CHUNK) {
        smm_job part = *j;
        part.n = j->n - t0 < SMM_ACT_CHUNK ? j->n - t0 : SMM_ACT_CHUNK;
        part.y = j->y + t0 * j->ldy;
        smm_quant_rows(&part, r0, r1, j->scratch + t0 * astride, astride);
    }
}

/* Which quantised activation layout a type's kernels read under `isa` (-1 for float
 * weights): products whose keys are equal can share one quantisation of x. The AVX-512
 * kernels take interleaved pairs and, for codes stored with an offset (Q4_0 -8, Q5_0 -16,
 * Q8_0 +128), integer corrections; the key's low 4 bits are log2 of that offset. Repacked
 * weights read the AVX2 layout on every ISA (key 8 on AVX-512, where it differs). */
static int smm_act_key(int type, int isa)
{
    int fam = smm_family(type);
    if (fam == SMM_FAMILY_FLOAT) return -1;
    if (type & SMM_R8) return fam * 16 + (isa < SMM_ISA_AVX512 ? 0 : 8);
    int log2_offset = isa < SMM_ISA_AVX512 ? 0 : type == SMM_Q4_0 ? 3 : type == SMM_Q5_0 ? 4 : type == SMM_Q8_0 ? 7 : 0;
    return fam * 16 + log2_offset;
}

/* Activation rows x[0:n] quantised for `type`'s kernels into act (n rows of
 * smm_act_stride bytes; see _quant.h). */
static void smm_quantize_rows(int type, int isa, const float* x, ptrdiff_t n, ptrdiff_t ldx, ptrdiff_t cols,
                              uint8_t* act)
{
    const int fam = smm_family(type), interleave = isa >= SMM_ISA_AVX512 && !(type & SMM_R8);
    const int log2_offset = interleave ? smm_act_key(type, isa) % 16 : 0;
    const ptrdiff_t astride = smm_act_stride(fam, cols);
    for (ptrdiff_t t = 0; t < n; t++) {
        if (fam == SMM_FAMILY_Q32)
            smm_quantize_act_q32(x + t * ldx, cols, act + t * astride, interleave, log2_offset);
        else smm_quantize_act_qk(x + t * ldx, cols, act + t * astride);
    }
}

/* ------------------------------------------------------------------------------------
 * Entry point
 * ---------------------------------------------------------------------------------- */

typedef void (*smm_range_fn)(const smm_job*, ptrdiff_t, ptrdiff_t);

/* Smallest piece of a product a thread claims, in weight bytes (~1-2 us of streaming): the
 * threads finish within about that of each other, and claim a 178 MB matrix in ~30 pieces. */
#define SMM_MIN_TAKE_BYTES 16384

/* A product split into blocks of `per_block` units (row groups or panels). */
typedef struct {
    const smm_job* j;
    smm_range_fn range;
    ptrdiff_t units, per_block;
} smm_blocked;

static void smm_run_blocks(const void* arg, ptrdiff_t b0, ptrdiff_t b1)
{
    const smm_blocked* bl = (const smm_blocked*)arg;
    ptrdiff_t u0 = b0 * bl->per_block, u1 = b1 * bl->per_block;
    bl->range(bl->j, u0, u1 < bl->units ? u1 : bl->units);
}

/* range(j, 0, units) on nt threads, in pieces of whole blocks of `align` units. Block borders
 * fall on the kernels' row tiles, so results do not depend on nt or on who ran which piece;
 * for row groups align = 16 rows also keeps threads off each other's cache lines of y when
 * n = 1. unit_bytes > 0 (the weight bytes of a unit): the threads claim shrinking pieces
 * (smp_parallel_range) down to SMM_MIN_TAKE_BYTES; 0: equal pieces, 8 per thread (the float
 * GEMM's packing and panels). */
static void smm_run(const smm_job* j, int nt, ptrdiff_t units, ptrdiff_t align, ptrdiff_t unit_bytes,
                    smm_range_fn range)
{
    if (nt <= 1 || units <= 1) {
        range(j, 0, units);
        return;
    }
    smm_blocked bl = {j, range, units, align};
    while ((units + bl.per_block - 1) / bl.per_block > SMP_MAX_CHUNKS) bl.per_block *= 2;
    ptrdiff_t block_bytes = bl.per_block * unit_bytes;
    smp_parallel_range(nt, (units + bl.per_block - 1) / bl.per_block,
                       block_bytes > 0 ? (SMM_MIN_TAKE_BYTES + block_bytes - 1) / block_bytes : SMP_MAX_CHUNKS,
                       smm_run_blocks, &bl);
}

/* Float weights: packed != 0 runs the packed GEMM, else the row-at-a-time kernel, whatever n
 * is. Each kernel computes a row the same way for any n, so a caller that picks the kernel
 * per segment of rows (a batch of sequences) gets every row exactly as a call of its own
 * segment would. Quantised weights ignore it: their rows never depend on n. */
static void smm_matmul_kernel(int packed, int type, const uint8_t* w, ptrdiff_t rows, ptrdiff_t cols,
                              ptrdiff_t row_bytes, const float* x, ptrdiff_t n, ptrdiff_t ldx, float* y,
                              ptrdiff_t ldy, const float* bias, int accumulate, int n_threads, void* scratch)
{
    if (rows <= 0 || n <= 0) return;
    if (cols <= 0) { /* empty dot products */
        for (ptrdiff_t t = 0; t < n; t++)
            for (ptrdiff_t r = 0; r < rows; r++) smm_store1(y + t * ldy + r, 0.0f, bias, r, accumulate);
        return;
    }
    smm_job j;
    j.type = type;
    j.w = w;
    j.rows = rows;
    j.cols = cols;
    j.row_bytes = row_bytes;
    j.x = x;
    j.n = n;
    j.ldx = ldx;
    j.y = y;
    j.ldy = ldy;
    j.bias = bias;
    j.accumulate = accumulate;
    j.isa = smm_isa();
    j.vnni = smm_vnni_active;
    j.gemm_t0 = 0;

    int nt = n_threads;
    if (nt > 1 && rows * cols < SMM_MIN_PARALLEL_ELEMS) nt = 1;

    ptrdiff_t need = smm_scratch_bytes(type, rows, cols, packed && n < SMM_GEMM_MIN_N ? SMM_GEMM_MIN_N : n);
    void* owned = NULL;
    if (need > 0 && scratch == NULL) {
        owned = malloc((size_t)need);
        if (owned == NULL) { /* no way to raise from here: make the failure loud */
            for (ptrdiff_t t = 0; t < n; t++)
                for (ptrdiff_t r = 0; r < rows; r++) y[t * ldy + r] = NAN;
            return;
        }
        scratch = owned;
    }
    j.scratch = (uint8_t*)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);

    int fam = smm_family(type);
    if (fam == SMM_FAMILY_FLOAT) {
        if (!packed) {
            ptrdiff_t groups = (rows + 3) / 4;
            if (nt > groups) nt = (int)groups;
            smm_run(&j, nt, groups, 4, 4 * row_bytes, smm_float_small_range);
        } else {
            const int NR = SMM_GEMM_NR(j.isa >= SMM_ISA_AVX512);
            ptrdiff_t panels = (rows + NR - 1) / NR;
            if (nt > panels) nt = (int)panels;
            const int MR = SMM_GEMM_MR(j.isa >= SMM_ISA_AVX512);
            for (ptrdiff_t t0 = 0; t0 < n; t0 += SMM_GEMM_MC) {
                ptrdiff_t mc = n - t0 < SMM_GEMM_MC ? n - t0 : SMM_GEMM_MC;
                j.gemm_t0 = t0;
                smm_run(&j, nt, (mc + MR - 1) / MR, 1, 0, smm_float_gemm_pack);
                smm_run(&j, nt, panels, 1, 0, smm_float_gemm_range);
            }
        }
    } else {
        smm_quantize_rows(type, j.isa, x, n, ldx, cols, j.scratch);
        ptrdiff_t groups = smm_units(type, rows);
        if (nt > groups) nt = (int)groups;
        smm_run(&j, nt, groups, 16 / smm_unit_rows(type), smm_unit_rows(type) * row_bytes, smm_quant_range);
    }
    free(owned);
}

static void smm_matmul(int type, const uint8_t* w, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t row_bytes,
                       const float* x, ptrdiff_t n, ptrdiff_t ldx, float* y, ptrdiff_t ldy, const float* bias,
                       int accumulate, int n_threads, void* scratch)
{
    smm_matmul_kernel(n >= SMM_GEMM_MIN_N, type, w, rows, cols, row_bytes, x, n, ldx, y, ldy, bias, accumulate,
                      n_threads, scratch);
}

/* ------------------------------------------------------------------------------------
 * Several products of the same activations: y_i = W_i x for i < count (Q, K and V of a
 * layer; its gate and up matrices). When every W_i is quantised with the same activation
 * format (smm_act_key) the activations are quantised once and all the row groups of all
 * the matrices are one job for the thread pool: one wake-up and one wait instead of one
 * per matrix (a decode step of a 30-layer model had ~210 of them). Each row runs the same
 * kernel as in a product of its own, so the results are identical to `count` smm_matmul
 * calls, which is also what runs when the weights do not qualify.
 * ---------------------------------------------------------------------------------- */

#define SMM_MANY_MAX 4

typedef struct {
    int type;
    const uint8_t* w;
    ptrdiff_t rows, row_bytes;
    float* y;
    ptrdiff_t ldy;
} smm_target;

typedef struct {
    smm_job jobs[SMM_MANY_MAX];
    ptrdiff_t first_block[SMM_MANY_MAX + 1]; /* blocks of product i: [first_block[i], first_block[i+1]) */
    ptrdiff_t per_block[SMM_MANY_MAX];       /* row groups per block of product i (16 rows or more) */
    int count;
} smm_many_job;

/* Blocks [b0, b1) of the products laid end to end. */
static void smm_many_range(const void* arg, ptrdiff_t b0, ptrdiff_t b1)
{
    const smm_many_job* m = (const smm_many_job*)arg;
    for (int i = 0; i < m->count && b0 < b1; i++) {
        if (b0 >= m->first_block[i + 1]) continue;
        const smm_job* j = &m->jobs[i];
        ptrdiff_t end = b1 < m->first_block[i + 1] ? b1 : m->first_block[i + 1];
        ptrdiff_t groups = smm_units(j->type, j->rows), g0 = (b0 - m->first_block[i]) * m->per_block[i];
        ptrdiff_t g1 = (end - m->first_block[i]) * m->per_block[i];
        smm_quant_range(j, g0, g1 < groups ? g1 : groups);
        b0 = end;
    }
}

/* scratch: at least the largest smm_scratch_bytes of the products (or NULL). */
static void smm_matmul_many(int count, const smm_target* t, ptrdiff_t cols, const float* x, ptrdiff_t n,
                            ptrdiff_t ldx, int n_threads, void* scratch)
{
    const int isa = smm_isa();
    int fuse = count >= 2 && count <= SMM_MANY_MAX && n > 0 && cols > 0 && smm_act_key(t[0].type, isa) >= 0;
    for (int i = 1; i < count && fuse; i++) fuse = smm_act_key(t[i].type, isa) == smm_act_key(t[0].type, isa);
    if (!fuse) {
        for (int i = 0; i < count; i++)
            smm_matmul(t[i].type, t[i].w, t[i].rows, cols, t[i].row_bytes, x, n, ldx, t[i].y, t[i].ldy, NULL, 0,
                       n_threads, scratch);
        return;
    }
    ptrdiff_t need = smm_scratch_bytes(t[0].type, t[0].rows, cols, n), elems = 0;
    void* owned = NULL;
    if (scratch == NULL) {
        owned = malloc((size_t)need);
        if (owned == NULL) { /* as smm_matmul: no way to raise, make the failure loud */
            for (int i = 0; i < count; i++)
                for (ptrdiff_t r = 0; r < n; r++)
                    for (ptrdiff_t c = 0; c < t[i].rows; c++) t[i].y[r * t[i].ldy + c] = NAN;
            return;
        }
        scratch = owned;
    }
    uint8_t* act = (uint8_t*)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    smm_quantize_rows(t[0].type, isa, x, n, ldx, cols, act);
    smm_many_job m;
    m.count = count;
    for (int i = 0; i < count; i++) {
        smm_job* j = &m.jobs[i];
        memset(j, 0, sizeof *j);
        j->type = t[i].type;
        j->w = t[i].w;
        j->rows = t[i].rows;
        j->cols = cols;
        j->row_bytes = t[i].row_bytes;
        j->x = x;
        j->n = n;
        j->ldx = ldx;
        j->y = t[i].y;
        j->ldy = t[i].ldy;
        j->scratch = act;
        j->isa = isa;
        j->vnni = smm_vnni_active;
        elems += t[i].rows * cols;
    }
    int nt = n_threads > 1 && elems >= SMM_MIN_PARALLEL_ELEMS ? n_threads : 1;
    /* blocks of 16 rows, as smm_run cuts each product, over all the products together */
    ptrdiff_t scale = 1, blocks, bytes = 0;
    for (;;) {
        blocks = 0;
        for (int i = 0; i < count; i++) {
            m.per_block[i] = scale * 16 / smm_unit_rows(t[i].type);
            blocks += (smm_units(t[i].type, t[i].rows) + m.per_block[i] - 1) / m.per_block[i];
        }
        if (blocks <= SMP_MAX_CHUNKS) break;
        scale *= 2;
    }
    m.first_block[0] = 0;
    for (int i = 0; i < count; i++) {
        ptrdiff_t units = smm_units(t[i].type, t[i].rows);
        m.first_block[i + 1] = m.first_block[i] + (units + m.per_block[i] - 1) / m.per_block[i];
        bytes += t[i].rows * t[i].row_bytes;
    }
    ptrdiff_t block_bytes = bytes / blocks > 0 ? bytes / blocks : 1;
    if (nt > 1)
        smp_parallel_range(nt, blocks, (SMM_MIN_TAKE_BYTES + block_bytes - 1) / block_bytes, smm_many_range, &m);
    else smm_many_range(&m, 0, blocks);
    free(owned);
}

/* Row `row` of the weight as float32. */
static void smm_get_row(int type, const uint8_t* w, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t row_bytes, ptrdiff_t row,
                        float* out)
{
    if (type & SMM_R8) smm_r8_get_row(type & ~SMM_R8, w, rows, cols, row_bytes, row, out);
    else smm_dequant_row(type, w + row * row_bytes, cols, out);
}

/* ------------------------------------------------------------------------------------
 * Read bandwidth (the roofline's ceiling): stream `bytes` through the same thread pool and
 * chunking as the products, 4 independent 256-bit loads in flight per iteration, nothing
 * stored. Returns a checksum so that the loads cannot be optimised away.
 * ---------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t* p;
    ptrdiff_t bytes, per_chunk;
    _Atomic uint64_t sum;
} smm_read_job;

static void smm_read_chunk(const void* arg, ptrdiff_t c)
{
    smm_read_job* r = (smm_read_job*)arg;
    ptrdiff_t b0 = c * r->per_chunk, b1 = b0 + r->per_chunk < r->bytes ? b0 + r->per_chunk : r->bytes;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    const uint8_t* p = r->p;
    for (ptrdiff_t i = b0; i + 128 <= b1; i += 128) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i*)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i*)(p + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i*)(p + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i*)(p + i + 96)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t v = (uint64_t)_mm256_extract_epi64(s, 0) + (uint64_t)_mm256_extract_epi64(s, 3);
    atomic_fetch_add_explicit(&r->sum, v, memory_order_relaxed);
}

/* p must be 64-byte aligned; bytes a multiple of 128 per chunk is not required (tails skipped). */
static uint64_t smm_read_bandwidth(const uint8_t* p, ptrdiff_t bytes, int n_threads)
{
    smm_read_job r;
    r.p = p;
    r.bytes = bytes;
    ptrdiff_t chunks = n_threads <= 1 ? 1 : (ptrdiff_t)n_threads * SMM_CHUNKS_PER_THREAD;
    r.per_chunk = ((bytes + chunks - 1) / chunks + 127) & ~(ptrdiff_t)127;
    atomic_init(&r.sum, 0);
    smp_parallel(n_threads, (bytes + r.per_chunk - 1) / r.per_chunk, smm_read_chunk, &r);
    return atomic_load(&r.sum);
}

#endif
