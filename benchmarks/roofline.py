"""Roofline of the matrix-vector kernels: weight GB/s against this machine's read bandwidth.

    python benchmarks/roofline.py [--quick] [--types Q4_1,Q8_0] [--isa avx2,avx512]
                                  [--threads 1,2] [--mb 64] [--cols 1536[,576...]] [--plain] [--json PATH]

Decoding one token is a stream of weights through matrix-vector products (n = 1), so
its ceiling is the rate at which one core (or all cores) can read memory. In one run:

* read bandwidth, 1 thread and all threads: a plain AVX2 read loop (4 loads in flight)
  over a 256 MB buffer on the kernels' own thread pool, and numpy's ``sum`` of the same
  bytes as float32 (1 thread; all threads through a Python thread pool over slices,
  numpy releasing the GIL); the higher of the two is the ceiling;
* for every weight type we load, y = W x (n = 1) on a matrix of ``--mb`` MB (default 64,
  twice a 32 MB L3, so the weights stream from DRAM as in real decoding), for each
  instruction-set path this CPU has (AVX2 always, AVX-512 when present) and each thread
  count (with ``--plain``, the repacked types (32-element blocks, K-quants) also in their plain layout, beside
  the row-interleaved one that Weight repacks them into at load); reported as GB/s of weight bytes and as % of the read bandwidth measured in the
  same process right before that row (so a machine shared with other work skews both
  figures alike). ``--cols`` takes several widths: the float kernels' streams are one row
  long, so rows of 576 (SmolLM2) and 1536 columns stress them differently. ``isa`` is the
  path the process allowed (SMALLMIND_ISA); ``kernel`` the family that ran: a repacked
  weight runs the AVX2 group kernels on every CPU, so its avx512 rows measure those too.

With ``--mb`` under the L2 (``--mb 0.375 --threads 1``), the matrix stays in cache across the
repeats: the rate is then the kernel's own compute ceiling on this core, and ``% of read`` its
headroom over the memory: how much faster a CPU's memory could get, relative to its compute,
before the kernel rather than the memory limits decoding. (Float rows under 1 MiB take the
in-cache float kernels, not the streaming ones.)

Goal (issue #7): >= 70% of the one-thread bandwidth at 1 thread (K-quants >= 60%), and
>= 70% of the all-threads bandwidth at all threads. One-thread rows are timed in thread
CPU time (robust when other processes share the cores), all-thread rows in wall time.
Best of several repeats. Writes benchmarks/results/roofline.json (benchmarks/_report.py).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _report import machine_info, write_report
from matmul import TYPES, best_time, random_weight

from smallmind._core import _matmul
from smallmind.tensors import GGMLType

K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
REPACKED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", *K_QUANTS)  # row-interleaved at load unless repack=False
READ_MB = 256
ISA_LEVELS = {"avx2": 1, "avx512": 2}


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A 64-byte aligned uint8 array of nbytes (filled, so every page is really mapped)."""
    raw = np.ones(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes]


def numpy_read_s(buf: np.ndarray, threads: int, pool: ThreadPoolExecutor, iters: int) -> float:
    floats = buf.view(np.float32)
    parts = np.array_split(floats, threads)
    tick = time.thread_time if threads == 1 else time.perf_counter
    t0 = tick()
    for _ in range(iters):
        if threads == 1:
            floats.sum()
        else:
            list(pool.map(np.sum, parts))
    return tick() - t0


def read_bandwidth(buf: np.ndarray, threads: int, repeats: int, pool: ThreadPoolExecutor,
                   min_time: float) -> dict:
    """GB/s of the pool's read loop and of numpy's sum, and the ceiling (the higher)."""
    ours = best_time(lambda it: _matmul._bench_read(buf, threads, it, threads == 1), min_time, repeats)
    theirs = best_time(lambda it: numpy_read_s(buf, threads, pool, it), min_time, repeats)
    kernel, numpy = buf.nbytes / ours / 1e9, buf.nbytes / theirs / 1e9
    return {"read_kernel": kernel, "read_numpy": numpy, "read": max(kernel, numpy)}


def big_weight(name: str, mb: float, cols: int, rng, repack: bool) -> _matmul.Weight:
    gtype = GGMLType[name]
    row_bytes = random_weight(gtype, 1, cols, rng).row_bytes
    rows = (int(mb * 1e6) + row_bytes - 1) // row_bytes
    rows = (rows + 15) // 16 * 16
    return random_weight(gtype, rows, cols, rng, repack)


def bench_type(name: str, w: _matmul.Weight, x: np.ndarray, isas: list[str], threads: list[int],
               buf: np.ndarray, pool: ThreadPoolExecutor, min_time: float, repeats: int) -> list[dict]:
    """Rows for one weight type: every path x thread count, each beside the bandwidth read just before."""
    y = np.empty((1, w.shape[0]), np.float32)
    rows = []
    for isa in isas:
        _matmul._set_isa(ISA_LEVELS[isa])
        for nt in threads:
            ceiling = read_bandwidth(buf, nt, repeats, pool, min_time)["read"]
            s = best_time(lambda it, nt=nt: _matmul._bench(w, x, y, nt, it, nt == 1), min_time, repeats)
            gbs = w.nbytes / s / 1e9
            goal = 60 if name in K_QUANTS and nt == 1 else 70
            rows.append({"type": name, "layout": "repacked" if w.repacked else "plain", "isa": isa,
                         "kernel": _matmul._kernel_path(w.type, w.repacked, w.nbytes),
                         "threads": nt, "shape": f"{w.shape[0]}x{w.shape[1]}",
                         "MB": w.nbytes / 1e6, "ms": s * 1e3, "GB/s": gbs, "read GB/s": ceiling,
                         "% of read": 100 * gbs / ceiling, "goal %": goal,
                         "met": "yes" if 100 * gbs / ceiling >= goal else "no"})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (for CI)")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--isa", default=None, help="paths to measure, e.g. avx2 (default: every one the CPU has)")
    ap.add_argument("--threads", default=None, help="thread counts (default: 1 and all cores)")
    ap.add_argument("--mb", type=float, default=64.0, help="weight bytes per matrix, in MB (> the LLC)")
    ap.add_argument("--cols", default="1536", help="columns, a comma list (multiples of 256 for K-quants)")
    ap.add_argument("--plain", action="store_true",
                    help="also the plain layout of the types repacked at load (Q4_0 ... Q8_0, Q4_K, Q5_K, Q6_K)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    min_time, repeats = (0.05, 3) if args.quick else (0.2, 7)
    cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    detected = _matmul._detected_isa()
    wanted = args.isa.split(",") if args.isa else [n for n, v in ISA_LEVELS.items() if v <= detected]
    for name in wanted:
        if name not in ISA_LEVELS:
            raise SystemExit(f"--isa: unknown path {name!r} (avx2 or avx512)")
        if ISA_LEVELS[name] > detected:
            raise SystemExit(f"--isa {name}: this CPU lacks it")
    rng = np.random.default_rng(0)
    buf = aligned_buffer(READ_MB << 20)
    pool = ThreadPoolExecutor(max(threads))
    ceilings = {nt: read_bandwidth(buf, nt, repeats, pool, min_time) for nt in threads}
    for nt, c in ceilings.items():
        print(f"read bandwidth, {nt} thread(s): kernel loop {c['read_kernel']:.1f} GB/s, "
              f"numpy sum {c['read_numpy']:.1f} GB/s", flush=True)
    rows = []
    for cols in (int(c) for c in args.cols.split(",")):
        x = rng.standard_normal((1, cols), dtype=np.float32)
        for name in args.types.split(","):
            for repack in (True, False) if args.plain and name in REPACKED else (True,):
                rows += bench_type(name, big_weight(name, args.mb, cols, rng, repack), x, wanted, threads,
                                   buf, pool, min_time, repeats)
                _matmul._set_isa(detected)
    pool.shutdown()
    meta = machine_info() | {
        "isa_detected": _matmul.ISA_NAMES[detected], "repeats": repeats, "read_buffer_MB": READ_MB,
        "read_bandwidth": {str(nt): c for nt, c in ceilings.items()},
        "timing": "1 thread: thread CPU time; more threads: wall time; best of repeats",
    }
    print()
    for nt, c in ceilings.items():
        print(f"read bandwidth at start, {nt} thread(s): {c['read']:.1f} GB/s")
    write_report("roofline", rows, ["type", "layout", "isa", "kernel", "threads", "shape", "MB", "ms", "GB/s", "read GB/s",
                                    "% of read", "goal %", "met"], meta, args.json)


if __name__ == "__main__":
    main()
