"""Matmul kernel throughput: GB/s of weight bytes and GFLOPS, per storage type and shape.

    python benchmarks/matmul.py [--quick] [--types Q4_1,Q8_0] [--isa avx2|avx512]
                                [--vnni none|emulated|avx512-vnni|avx-vnni]
                                [--threads 1,2] [--ns 1,64] [--json PATH]

* per type and shape (rows x cols = out x in features): y = W x through the cdef path
  (no Python per call) for n = 1 (decoding) and n = 64 (prompt processing), 1 and 2
  threads, beside numpy's W @ x on the dequantised float32 matrix (single-threaded BLAS);
* model sweeps: every matmul of a SmolLM2-135M forward pass (30 layers of Q4_1 q/k/v/o/
  gate/up/down, Q8_0 output head), the weights streaming from memory as in real decoding;
  reported as matmul-only tokens/s;
* f32: small matvecs against np.dot (Python-level and cdef-level), and 512^3 against
  numpy's BLAS.

--vnni sets the vpdpbusd form of the repacked kernels' tiles of several activation rows
(default: the CPU's own; see _matmul.kernel_paths): on a CPU with AVX512-VNNI or AVX-VNNI,
`--types Q4_1,Q5_0,Q8_0 --ns 4,64,256 --no-sweep --no-numpy` run with --vnni none and
without it measures what vpdpbusd buys for batches and prompts.

Each figure is the best of several repeats. Single-threaded figures use the thread's CPU
time (robust when other processes share the cores), 2-thread figures wall time (they
need both cores free: read them on a quiet machine). Writes
benchmarks/results/matmul.json and matmul_f32.json through benchmarks/_report.py.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from _report import machine_info, write_report  # noqa: E402

import smallmind  # noqa: E402,F401  (CPU check before the kernels load)
from smallmind._core import _matmul  # noqa: E402
from smallmind.tensors import BLOCK_LAYOUT, GGMLType  # noqa: E402

SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576)]
K_SHAPES = [(576, 1536), (640, 1024), (640, 2048), (2048, 1024)]  # K-quants need cols % 256 == 0
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
# SmolLM2-135M: per layer q, k, v, o, gate, up, down (rows x cols); 30 layers; 49152-row head
SMOLLM2_LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def random_weight(gtype: GGMLType, rows: int, cols: int, rng, repack: bool = True) -> _matmul.Weight:
    """Random storage with sane scales (kernel speed does not depend on the values);
    repack=False keeps the plain layout of the 32-element block types."""
    if gtype == GGMLType.F32:
        data = rng.standard_normal((rows, cols), dtype=np.float32)
    elif gtype == GGMLType.F16:
        data = rng.standard_normal((rows, cols), dtype=np.float32).astype(np.float16)
    elif gtype == GGMLType.BF16:
        data = (rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:
        block, nbytes = BLOCK_LAYOUT[gtype]
        data = rng.integers(0, 256, size=(rows * cols // block, nbytes), dtype=np.uint8)
        half = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        if gtype == GGMLType.Q6_K:
            data[:, 208:210] = half
        else:  # d (and m / dmin) lead the other blocks
            data[:, 0:2] = half
            if gtype in (GGMLType.Q4_1, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K):
                data[:, 2:4] = half
        data = data.reshape(-1)
    return _matmul.Weight(int(gtype), (rows, cols), data, repack=repack)


def best_time(fn, min_time: float, repeats: int) -> float:
    """Best per-call seconds of `fn(iters)` (which returns seconds for iters calls)."""
    iters = 1
    while fn(iters) < min_time / repeats and iters < 1 << 20:
        iters *= 2
    return min(fn(iters) / iters for _ in range(repeats))


def clock(threads: int):
    return time.thread_time if threads == 1 else time.perf_counter


def time_numpy(w32: np.ndarray, x: np.ndarray, min_time: float, repeats: int) -> float:
    out = np.empty((x.shape[0], w32.shape[0]), np.float32)
    tick = clock(1)

    def run(iters):
        t0 = tick()
        if x.shape[0] == 1:
            v, o = x[0], out[0]
            for _ in range(iters):
                np.dot(w32, v, out=o)
        else:
            for _ in range(iters):
                np.matmul(x, w32.T, out=out)
        return tick() - t0

    return best_time(run, min_time, repeats)


def bench_types(names, ns, threads, min_time, repeats, rng, with_numpy):
    rows_out = []
    for name in names:
        gtype = GGMLType[name]
        for rows, cols in (K_SHAPES if name.endswith("_K") else SHAPES):
            w = random_weight(gtype, rows, cols, rng)
            w32 = w.dequantize() if with_numpy else None
            for n in ns:
                x = rng.standard_normal((n, cols), dtype=np.float32)
                y = np.empty((n, rows), np.float32)
                np_s = time_numpy(w32, x, min_time, repeats) if with_numpy else None
                for nt in threads:
                    s = best_time(lambda it: _matmul._bench(w, x, y, nt, it, nt == 1), min_time, repeats)
                    rows_out.append({
                        "kind": "matmul", "type": name, "shape": f"{rows}x{cols}", "n": n, "threads": nt,
                        "us": s * 1e6, "GB/s": w.nbytes / s / 1e9, "GFLOPS": 2.0 * rows * cols * n / s / 1e9,
                        "numpy_f32_us": np_s * 1e6 if np_s else None,
                        "vs_numpy": np_s / s if np_s else None,
                    })
                    print(rows_out[-1], flush=True)
    return rows_out


def bench_sweeps(threads, min_time, repeats, rng):
    """SmolLM2-135M's matmuls, weights streaming from memory (96 MB per pass)."""
    layers = [random_weight(GGMLType.Q4_1, r, c, rng) for _ in range(30) for r, c in SMOLLM2_LAYER]
    head = random_weight(GGMLType.Q8_0, 49152, 576, rng)
    out = []
    for label, weights, n in [("SmolLM2-135M decode (layers + head)", layers + [head], 1),
                              ("SmolLM2-135M prefill 64 (layers)", layers, 64)]:
        nbytes = sum(w.nbytes for w in weights)
        for nt in threads:
            s = best_time(lambda it: _matmul._bench_sweep(weights, n, nt, it, nt == 1), min_time * 5, repeats)
            out.append({"kind": "sweep", "type": label, "shape": f"{nbytes / 1e6:.0f} MB", "n": n, "threads": nt,
                        "us": s * 1e6, "GB/s": nbytes / s / 1e9,
                        "GFLOPS": 2.0 * sum(w.shape[0] * w.shape[1] for w in weights) * n / s / 1e9,
                        "tok/s": n / s})
            print(out[-1], flush=True)
    return out


def bench_f32(threads, min_time, repeats, rng):
    rows_out = []
    tick = clock(1)
    for rows, cols in [(384, 128), (172, 64), (1536, 576)]:
        w32 = rng.standard_normal((rows, cols), dtype=np.float32)
        w = _matmul.Weight(int(GGMLType.F32), (rows, cols), w32)
        x = rng.standard_normal(cols, dtype=np.float32)
        y = np.empty(rows, np.float32)

        def ours(iters):
            t0 = tick()
            for _ in range(iters):
                w.matmul(x, out=y)
            return tick() - t0

        def theirs(iters):
            t0 = tick()
            for _ in range(iters):
                np.dot(w32, x, out=y)
            return tick() - t0

        a, b = best_time(ours, min_time, repeats), best_time(theirs, min_time, repeats)
        c = best_time(lambda it: _matmul._bench(w, x[None], y[None], 1, it, True), min_time, repeats)
        rows_out.append({"case": f"matvec {rows}x{cols}", "threads": 1, "smallmind_us": a * 1e6,
                         "smallmind_cdef_us": c * 1e6, "numpy_us": b * 1e6, "ratio_cdef_vs_numpy": b / c})
        print(rows_out[-1], flush=True)
    m = 512
    w32 = rng.standard_normal((m, m), dtype=np.float32)
    x = rng.standard_normal((m, m), dtype=np.float32)
    y = np.empty((m, m), np.float32)
    w = _matmul.Weight(int(GGMLType.F32), (m, m), w32)
    np_s = time_numpy(w32, x, min_time, repeats)
    for nt in threads:
        s = best_time(lambda it: _matmul._bench(w, x, y, nt, it, nt == 1), min_time, repeats)
        rows_out.append({"case": "gemm 512x512x512", "threads": nt, "smallmind_us": s * 1e6,
                         "numpy_us": np_s * 1e6, "smallmind_GFLOPS": 2 * m ** 3 / s / 1e9,
                         "numpy_GFLOPS": 2 * m ** 3 / np_s / 1e9, "ratio_vs_numpy": np_s / s})
        print(rows_out[-1], flush=True)
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter timings")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--isa", choices=["avx2", "avx512"], default=None)
    ap.add_argument("--vnni", choices=["none", "emulated", "avx512-vnni", "avx-vnni"], default=None)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--ns", default="1,64")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--json", default=None,
                    help="JSON path for the main table (the f32 table goes beside it, *_f32.json)")
    args = ap.parse_args()
    if args.isa:
        _matmul._set_isa({"avx2": 1, "avx512": 2}[args.isa])
    if args.vnni:
        _matmul._set_vnni({name or "none": form for form, name in _matmul.VNNI_NAMES.items()}[args.vnni])
    isa = {1: "avx2", 2: "avx512"}[_matmul._isa()]
    min_time, repeats = (0.05, 3) if args.quick else (0.2, 5)
    threads = [int(t) for t in args.threads.split(",")]
    ns = [int(n) for n in args.ns.split(",")]
    rng = np.random.default_rng(0)
    meta = machine_info() | {"kernels": isa, "vnni": _matmul.VNNI_NAMES[_matmul._vnni()], "repeats": repeats,
                             "timing": "thread CPU time for 1 thread, wall time otherwise; best of repeats"}
    rows = bench_types(args.types.split(","), ns, threads, min_time, repeats, rng, not args.no_numpy)
    if not args.no_sweep:
        rows += bench_sweeps(threads, min_time, repeats, rng)
    print()
    write_report("matmul", rows, ["kind", "type", "shape", "n", "threads", "us", "GB/s", "GFLOPS",
                                  "numpy_f32_us", "vs_numpy", "tok/s"], meta, args.json)
    print()
    f32 = bench_f32(threads, min_time, repeats, rng)
    f32_json = None if args.json is None else os.path.splitext(args.json)[0] + "_f32.json"
    write_report("matmul_f32", f32, ["case", "threads", "smallmind_us", "smallmind_cdef_us", "numpy_us",
                                     "smallmind_GFLOPS", "numpy_GFLOPS", "ratio_vs_numpy", "ratio_cdef_vs_numpy"],
                 meta, f32_json)


if __name__ == "__main__":
    main()
