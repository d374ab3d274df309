"""Static cycle estimates of the repacked kernels with and without vpdpbusd, per CPU model.

    python tools/mca_kernels.py [--cpus znver4,sapphirerapids,alderlake,icelake-server]
                                [--llvm-mca llvm-mca-19] [--decode]

For CPUs this machine is not: it compiles one block of each kernel (a Q4_1 and a Q5_0 panel
slice of 2 groups x 4 activation rows, 4-row Q8_0 and Q4_1 tiles; _matmul_r8.h,
_matmul_r8panel.h) as the package does (gcc -O3 -mavx2 -mfma -mf16c), with maddubs and with
VEX vpdpbusd (or the AVX2 stand-in that tests run, --form emulated), and asks llvm-mca
(LLVM's machine-code analyser; Debian: apt install llvm-19) for the cycles per block in a
steady loop on each CPU's scheduling model. A model, not a measurement: it knows ports,
latencies and the front end, not caches or memory. Decoding streams from memory; these
estimates are for batches and prompts, which are compute-bound.

--decode instead models the one-row kernels that decoding runs (every repacked type, one
activation row): the steady loop over a group's blocks, in cycles per block (8 rows x 32
elements, 8 rows x 256 for the K-quants) and bytes of weights per cycle, the kernel's compute
ceiling on each CPU (times the clock: GB/s it cannot exceed, whatever the memory).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "smallmind" / "_core"
CFLAGS = ["-O3", "-g0", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno", "-Wno-unused-function",
          "-fno-asynchronous-unwind-tables"]
# kernel -> the call of one block (V: the vpdpbusd form)
KERNELS = {
    "Q4_1 panel 2x4": "smm_r8_panel_tile(SMM_Q4_1, V, 2, 4, p, 0, 1, act, 1024, 1024, acc)",
    "Q5_0 panel 2x4": "smm_r8_panel_tile(SMM_Q5_0, V, 2, 4, p, 0, 1, act, 1024, 1024, acc)",
    "Q8_0 tile x4": "smm_r8_tile(SMM_Q8_0, V, 4, g, 1, act, 1024, 1024, out)",
    "Q4_1 tile x4": "smm_r8_tile(SMM_Q4_1, V, 4, g, 1, act, 1024, 1024, out)",
}
# --measure: the type and activation rows of a product that runs each kernel (1536 x 576)
MEASURE = {"Q4_1 panel 2x4": ("Q4_1", 64), "Q5_0 panel 2x4": ("Q5_0", 64), "Q8_0 tile x4": ("Q8_0", 4),
           "Q4_1 tile x4": ("Q4_1", 4)}
FORMS = {"maddubs": "SMM_VNNI_NONE", "vpdpbusd": "SMM_VNNI_VEX", "emulated": "SMM_VNNI_EMULATED"}
# --decode: type -> (bytes of a group block, the call over nb blocks of one activation row)
DECODE = {t: (bb, f"smm_r8_tile(SMM_{t}, 0, 1, g, nb, act, 1024, 1024, acc)")
          for t, bb in (("Q4_0", 144), ("Q4_1", 160), ("Q5_0", 176), ("Q5_1", 192), ("Q8_0", 272))}
DECODE |= {t: (bb, f"smm_rk_tile(SMM_{t}, 1, 0, 0, g, 0, nb, act, 1024, 1024, acc)")
           for t, bb in (("Q4_K", 1152), ("Q5_K", 1408), ("Q6_K", 1680))}


def source() -> str:
    lines = ['#include "_matmul_impl.h"']
    for i, call in enumerate(KERNELS.values()):
        for form, v in FORMS.items():
            lines.append(f"__attribute__((noinline)) void k{i}_{form}(const smm_r8_unpacked* p, "
                         "const uint8_t* g, const uint8_t* act, __m256 acc[SMM_R8P_GROUPS][SMM_R8P_C], "
                         f"__m256 out[4]) {{ const int V = {v}; {call}; }}")
    return "\n".join(lines) + "\n"


def compile_asm(cc: str, source_text: str, tmp: Path) -> str:
    """`source_text` compiled as the package compiles the kernels, as assembly."""
    (tmp / "k.c").write_text(source_text)
    subprocess.run([cc, *CFLAGS, f"-I{CORE}", "-S", str(tmp / "k.c"), "-o", str(tmp / "k.s")], check=True)
    return (tmp / "k.s").read_text()


def function_text(asm: str, name: str) -> str:
    return re.search(rf"^{name}:\n(.*?)^\t\.size\t{name}", asm, re.S | re.M).group(1)


def instructions(text: str) -> str:
    """The instruction lines of `text` (labels, directives and the return dropped)."""
    return "\n".join(ln for ln in text.splitlines()
                     if ln.startswith("\t") and not ln.startswith("\t.") and "ret" not in ln) + "\n"


def bodies(asm: str) -> dict[str, str]:
    """Each wrapper's instructions."""
    return {name: instructions(function_text(asm, name)) for name in re.findall(r"^(k\d+_\w+):$", asm, re.M)}


def decode_source() -> str:
    lines = ['#include "_matmul_impl.h"']
    for t, (_, call) in DECODE.items():
        lines.append(f"__attribute__((noinline)) void d_{t}(const uint8_t* g, ptrdiff_t nb, "
                     f"const uint8_t* act, __m256 acc[4]) {{ {call}; }}")
    return "\n".join(lines) + "\n"


def loop_body(asm: str, name: str) -> str:
    """The instructions of the longest loop (a label that a later jump goes back to) in `name`."""
    body = function_text(asm, name)
    loops = [m.group(1) for lab in re.findall(r"^(\.L\d+):", body, re.M)
             if (m := re.search(rf"^{re.escape(lab)}:\n(.*?)^\tj\w+\t{re.escape(lab)}\n", body, re.S | re.M))]
    return instructions(max(loops, key=len))


def cycles(mca: str, cpu: str, body: str, tmp: Path) -> float:
    path = tmp / "body.s"
    path.write_text(body)
    iterations = 200
    run = subprocess.run([mca, f"-mcpu={cpu}", "-mattr=+avxvnni", f"-iterations={iterations}", str(path)],
                         capture_output=True, text=True, check=True)
    return int(re.search(r"Total Cycles:\s+(\d+)", run.stdout).group(1)) / iterations


def measured_ratio(name: str, rounds: int = 7) -> str:
    """Time of the product with maddubs over its time with the emulated vpdpbusd (as the model's
    cycles), measured here (one
    thread, thread CPU time, best of 5 per form, the forms alternated): median (range)."""
    import statistics
    import time

    import numpy as np

    sys.path[:0] = [str(CORE.parent.parent), str(CORE.parent.parent / "tests")]
    from test_matmul import make_weight

    from smallmind._core import _matmul
    gtype, n = MEASURE[name]
    rng = np.random.default_rng(1)
    w = make_weight(gtype, 1536, 576, rng)[0]
    x = rng.standard_normal((n, 576)).astype(np.float32)
    ratios = []
    for _ in range(rounds):
        best = {}
        for form in (0, 3):
            _matmul._set_vnni(form)
            times = []
            for _ in range(5):
                t = time.thread_time()
                for _ in range(max(1, 2000 // n)):
                    w.matmul(x)
                times.append(time.thread_time() - t)
            best[form] = min(times)
        ratios.append(best[0] / best[3])
    _matmul._set_vnni(0)
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", default="znver4,sapphirerapids,alderlake,icelake-server")
    ap.add_argument("--form", choices=["vpdpbusd", "emulated"], default="vpdpbusd",
                    help="emulated: the AVX2 stand-in, which runs here too, to set the model's "
                         "estimate beside a measurement (--measure)")
    ap.add_argument("--measure", action="store_true",
                    help="with --form emulated: also time both forms here and add the measured ratio")
    ap.add_argument("--llvm-mca", default="llvm-mca-19")
    ap.add_argument("--cc", default="gcc")
    ap.add_argument("--decode", action="store_true", help="the one-row (decoding) kernels' loops instead")
    args = ap.parse_args()
    cpus, mca = args.cpus.split(","), args.llvm_mca
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.decode:
            asm = compile_asm(args.cc, decode_source(), tmp)
            print("one activation row: cycles per group block (bytes of weights per cycle); "
                  "llvm-mca model estimates\n")
            print("| type | instructions | " + " | ".join(cpus) + " |")
            print("|---" * (len(cpus) + 2) + "|")
            for t, (nbytes, _) in DECODE.items():
                body = loop_body(asm, f"d_{t}")
                cells = [f"{c:.1f} ({nbytes / c:.1f})" for c in (cycles(mca, cpu, body, tmp) for cpu in cpus)]
                print(f"| {t} | {body.count(chr(10))} | " + " | ".join(cells) + " |")
            return 0
        code = bodies(compile_asm(args.cc, source(), tmp))
        measure = args.measure and args.form == "emulated"
        print(f"cycles per block, maddubs / {args.form}: llvm-mca model estimates"
              + ("; measured here: time with maddubs / time emulated\n" if measure else "\n"))
        print("| kernel | " + " | ".join(cpus) + (" | measured here |" if measure else " |"))
        print("|---" * (len(cpus) + 1 + measure) + "|")
        for i, name in enumerate(KERNELS):
            cells = []
            for cpu in cpus:
                old, new = (cycles(mca, cpu, code[f"k{i}_{f}"], tmp) for f in ("maddubs", args.form))
                cells.append(f"{old:.0f} / {new:.0f} = {old / new:.2f}x")
            if measure:
                cells.append(measured_ratio(name))
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
