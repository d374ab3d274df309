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

#include <cpuid.h>
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

/* The vpdpbusd (u8 x s8 dot of 4 bytes into int32 lanes) the repacked kernels use for
 * several activation rows, on 256-bit vectors (smm_dpbusd, _matmul_avx2.h): EVEX-encoded
 * with AVX512-VNNI + VL (Ice Lake, Sapphire Rapids, Zen 4/5), VEX-encoded with AVX-VNNI
 * (Alder Lake and later Intel cores, Zen 5), or none. EMULATED computes the same sums from
 * AVX2 operations: tests run the VNNI kernels' code paths with it on any CPU. */
#define SMM_VNNI_NONE 0
#define SMM_VNNI_EVEX 1
#define SMM_VNNI_VEX 2
#define SMM_VNNI_EMULATED 3
static int smm_vnni_detected = 0;
static int smm_vnni_active = 0;

static int smm_detect_vnni(void)
{
    /* AVX-VNNI is CPUID.(EAX=7, ECX=1):EAX bit 4 (read directly: __builtin_cpu_supports knows
     * "avxvnni" only from GCC 11 on); it uses the ymm state the AVX2 kernels need anyway */
    unsigned int a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1)) return SMM_VNNI_VEX; /* the shorter form */
    __builtin_cpu_init();
    /* avx512* also checks that the OS saves the AVX-512 state the EVEX form touches */
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")) return SMM_VNNI_EVEX;
    return SMM_VNNI_NONE;
}

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
        /* SMALLMIND_ISA=avx2 means plain AVX2 everywhere, VNNI included, so that the AVX2
         * kernels can be measured on any CPU */
        smm_vnni_detected = smm_detect_vnni();
        smm_vnni_active = want == SMM_ISA_AVX2 ? SMM_VNNI_NONE : smm_vnni_detected;
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
    /* below the CPU's best, or under SMALLMIND_ISA=avx2: plain AVX2, as at start-up */
    const int plain = level < smm_isa_detected || smm_isa_requested() == SMM_ISA_AVX2;
    smm_vnni_active = plain ? SMM_VNNI_NONE : smm_vnni_detected;
    return level;
}

/* Tests, benchmarks: use vpdpbusd in the given form (EMULATED on any CPU; the others only
 * where detected, else refused). Returns the form now active, -1 when refused. */
static int smm_set_vnni(int mode)
{
    smm_isa();
    if (mode != SMM_VNNI_NONE && mode != SMM_VNNI_EMULATED && mode != smm_vnni_detected &&
        !(mode == SMM_VNNI_EVEX && smm_isa_detected == SMM_ISA_AVX512))
        return -1;
    smm_vnni_active = mode;
    return mode;
}

#endif
