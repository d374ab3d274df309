"""Matmul kernel throughput: GB/s of weight bytes and GFLOPS, per storage type and shape.

    python benchmarks/matmul.py [--quick] [--types Q4_1,Q8_0] [--isa avx2|avx512] [--json PATH]

For every type and shape (rows x cols = out x in features) it times y = W x through the
cdef path (no Python per call) for n = 1 (decoding) and n = 64 (prompt processing) with
1 and 2 threads, plus numpy's W @ x on the dequantised float32 matrix for reference, and
an f32 512x512x512 product against numpy's BLAS. Each figure is the best of several
repeats; single-threaded figures use the thread's CPU time (robust when other processes
share the cores), 2-thread figures wall time. Prints a markdown table and writes JSON
(default benchmarks/results/matmul.json).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import smallmind  # noqa: E402,F401  (CPU check before the kernels load)
from smallmind._core import _matmul  # noqa: E402
from smallmind.tensors import BLOCK_LAYOUT, GGMLType  # noqa: E402

SHAPES = [(576, 576), (1536, 576), (576, 1536), (49152, 576)]
K_SHAPES = [(576, 1536), (640, 1024), (640, 2048), (2048, 1024)]  # K-quants need cols % 256 == 0
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]


def random_weight(gtype: GGMLType, rows: int, cols: int, rng) -> _matmul.Weight:
    """Random storage with sane scales (kernel speed does not depend on the values)."""
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
    return _matmul.Weight(int(gtype), (rows, cols), data)


def best_time(fn, min_time: float, repeats: int) -> float:
    """Best per-call seconds of `fn(iters)` (which returns seconds for iters calls)."""
    iters = 1
    while True:
        t = fn(iters)
        if t >= min_time / repeats or iters >= 1 << 20:
            break
        iters *= 2
    return min(fn(iters) / iters for _ in range(repeats))


def _clock(threads: int):
    """Thread CPU time for single-threaded runs (robust when other processes share the
    cores), wall time otherwise."""
    return time.thread_time if threads == 1 else time.perf_counter


def time_numpy(w32: np.ndarray, x: np.ndarray, min_time: float, repeats: int) -> float:
    out = np.empty((x.shape[0], w32.shape[0]), np.float32)
    xt = np.ascontiguousarray(x)

    clock = _clock(1)

    def run(iters):
        t0 = clock()
        if x.shape[0] == 1:
            v, o = xt[0], out[0]
            for _ in range(iters):
                np.dot(w32, v, out=o)
        else:
            for _ in range(iters):
                np.matmul(xt, w32.T, out=out)
        return clock() - t0

    return best_time(run, min_time, repeats)


def bench_type(name: str, shapes, ns, threads, min_time, repeats, rng, with_numpy=True):
    gtype = GGMLType[name]
    rows_out = []
    for rows, cols in shapes:
        w = random_weight(gtype, rows, cols, rng)
        w32 = w.dequantize() if with_numpy else None
        for n in ns:
            x = rng.standard_normal((n, cols), dtype=np.float32)
            y = np.empty((n, rows), np.float32)
            np_s = time_numpy(w32, x, min_time, repeats) if with_numpy else None
            for nt in threads:
                s = best_time(lambda it: _matmul._bench(w, x, y, nt, it, nt == 1), min_time, repeats)
                rows_out.append({
                    "type": name, "rows": rows, "cols": cols, "n": n, "threads": nt,
                    "us": s * 1e6, "GBps": w.nbytes / s / 1e9, "GFLOPS": 2.0 * rows * cols * n / s / 1e9,
                    "numpy_f32_us": np_s * 1e6 if np_s else None,
                })
                r = rows_out[-1]
                print(f"| {name} | {rows}x{cols} | {n} | {nt} | {r['us']:.1f} | {r['GBps']:.1f} | "
                      f"{r['GFLOPS']:.1f} | {r['numpy_f32_us']:.1f} |" if np_s else
                      f"| {name} | {rows}x{cols} | {n} | {nt} | {r['us']:.1f} | {r['GBps']:.1f} | "
                      f"{r['GFLOPS']:.1f} | - |", flush=True)
    return rows_out


def bench_small_f32(min_time, repeats, rng):
    """Small matvecs, Python-level Weight.matmul(out=) vs np.dot(W, x, out=), and cdef path."""
    print("\n| f32 matvec rows x cols | Weight.matmul us | np.dot us | cdef path us |")
    print("|---|---|---|---|")
    res = []
    for rows, cols in [(384, 128), (172, 64), (1536, 576)]:
        w32 = rng.standard_normal((rows, cols), dtype=np.float32)
        w = _matmul.Weight(int(GGMLType.F32), (rows, cols), w32)
        x = rng.standard_normal(cols, dtype=np.float32)
        y = np.empty(rows, np.float32)

        clock = _clock(1)

        def ours(iters):
            t0 = clock()
            for _ in range(iters):
                w.matmul(x, out=y)
            return clock() - t0

        def theirs(iters):
            t0 = clock()
            for _ in range(iters):
                np.dot(w32, x, out=y)
            return clock() - t0

        a = best_time(ours, min_time, repeats)
        b = best_time(theirs, min_time, repeats)
        c = best_time(lambda it: _matmul._bench(w, x[None], y[None], 1, it, True), min_time, repeats)
        print(f"| {rows}x{cols} | {a * 1e6:.2f} | {b * 1e6:.2f} | {c * 1e6:.2f} |")
        res.append({"rows": rows, "cols": cols, "smallmind_py_us": a * 1e6, "numpy_us": b * 1e6,
                    "smallmind_cdef_us": c * 1e6})
    return res


def bench_gemm512(min_time, repeats, rng, threads):
    print("\n| f32 512x512x512 | threads | smallmind GFLOPS | numpy GFLOPS (1 thread BLAS) | ratio |")
    print("|---|---|---|---|---|")
    m = 512
    w32 = rng.standard_normal((m, m), dtype=np.float32)
    x = rng.standard_normal((m, m), dtype=np.float32)
    y = np.empty((m, m), np.float32)
    w = _matmul.Weight(int(GGMLType.F32), (m, m), w32)
    np_s = time_numpy(w32, x, min_time, repeats)
    res = []
    for nt in threads:
        s = best_time(lambda it: _matmul._bench(w, x, y, nt, it, nt == 1), min_time, repeats)
        ours, theirs = 2 * m ** 3 / s / 1e9, 2 * m ** 3 / np_s / 1e9
        print(f"| 512^3 | {nt} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
        res.append({"threads": nt, "GFLOPS": ours, "numpy_GFLOPS": theirs})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter timings")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--isa", choices=["avx2", "avx512"], default=None)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--ns", default="1,64")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "matmul.json"))
    args = ap.parse_args()
    if args.isa:
        _matmul._set_isa({"avx2": 1, "avx512": 2}[args.isa])
    isa = {1: "avx2", 2: "avx512"}[_matmul._isa()]
    min_time, repeats = (0.05, 3) if args.quick else (0.2, 5)
    threads = [int(t) for t in args.threads.split(",")]
    ns = [int(n) for n in args.ns.split(",")]
    rng = np.random.default_rng(0)
    print(f"kernels: {isa}; numpy BLAS single-threaded; best of {repeats}\n")
    print("| type | rows x cols | n | threads | us | GB/s (weights) | GFLOPS | numpy f32 us |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.types.split(","):
        shapes = K_SHAPES if name.endswith("_K") else SHAPES
        results += bench_type(name, shapes, ns, threads, min_time, repeats, rng, not args.no_numpy)
    small = bench_small_f32(min_time, repeats, rng)
    gemm = bench_gemm512(min_time, repeats, rng, threads)
    report = {"isa": isa, "machine": platform.processor() or platform.machine(), "matmul": results,
              "small_f32": small, "gemm512": gemm}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
