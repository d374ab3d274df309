/*
 * Run-time choice of instruction set for the matmul kernels.
 *
 * The package is compiled with -mavx2 -mfma -mf16c only, so every function in the
 * default target can run on any x86-64-v3 CPU. Faster kernels that use AVX-512
 * (F, BW, VL, DQ, VNNI, VBMI), GFNI and BMI2 live in functions marked SMM_AVX512_TARGET; they
 * are only ever called when smm_isa() says the CPU (and the OS, which must save the
 * zmm/mask registers) supports all of those. Ice Lake, Sapphire Rapids and Zen 4
 * qualify; everything else takes the AVX2 path.
 */
#ifndef SMALLMIND_SIMD_DISPATCH_H
#define SMALLMIND_SIMD_DISPATCH_H

#include <stdlib.h>
#include <string.h>

#define SMM_ISA_AVX2 1
#define SMM_ISA_AVX512 2

#define SMM_AVX512_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,gfni,bmi,bmi2")))

/* What the CPU can do (probed once) and what the kernels use (<= detected; tests lower
 * it to exercise the AVX2 kernels on an AVX-512 machine). Plain ints: the probe is
 * idempotent, so a race between threads initialising at once is harmless. */
static int smm_isa_detected = 0;
static int smm_isa_active = 0;

static int smm_detect_isa(void)
{
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks XCR0, i.e. that the OS saves AVX-512 state. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("gfni") && __builtin_cpu_supports("bmi2"))
        return SMM_ISA_AVX512;
    return SMM_ISA_AVX2;
}

/* SMALLMIND_ISA=avx2|avx512 asks for a path for the whole process (every module that
 * includes this header reads it on its first call). Returns the level asked for, 0 when
 * unset or "auto", -1 for anything else. The Python side (_matmul import) refuses an
 * invalid value, or avx512 on a CPU without it, with a clear error; here a request is only
 * ever clamped to what the CPU can run, so no path can raise SIGILL. */
static int smm_isa_requested(void)
{
    const char* v = getenv("SMALLMIND_ISA");
    if (v == NULL || v[0] == 0 || strcmp(v, "auto") == 0) return 0;
    if (strcmp(v, "avx2") == 0) return SMM_ISA_AVX2;
    if (strcmp(v, "avx512") == 0) return SMM_ISA_AVX512;
    return -1;
}

static inline int smm_isa(void)
{
    if (!smm_isa_active) {
        int want = smm_isa_requested();
        smm_isa_detected = smm_detect_isa();
        smm_isa_active = want > 0 && want < smm_isa_detected ? want : smm_isa_detected;
    }
    return smm_isa_active;
}

/* Use at most `level` (clamped to what the CPU supports); returns the level now active. */
static int smm_set_isa(int level)
{
    smm_isa();
    if (level < SMM_ISA_AVX2) level = SMM_ISA_AVX2;
    if (level > smm_isa_detected) level = smm_isa_detected;
    smm_isa_active = level;
    return level;
}

#endif
