"""K-quant (Q4_K, Q5_K, Q6_K) product rates: GMAC/s per core for n = 1, 2, 4, 8, 64, 256.

    python benchmarks/kquant.py [--quick] [--types Q4_K,Q6_K] [--ns 1,8,64,256] [--shapes 640x1024]

Prompts and batches run the K-quant GEMM tiles (Gemma 3 270M: Q4_K attn_output 640x1024,
Q6_K ffn_down 640x2048; these shapes fit in L2/L3, as one layer's weights do while a prompt
runs through it), decoding the matrix-vector ones (see roofline.py for n = 1 from DRAM). One
thread, timed in thread CPU time (robust on a shared machine). Prints one line per case and
writes benchmarks/results/kquant.json.
"""
from __future__ import annotations

import argparse

import numpy as np
from _report import machine_info, write_report
from matmul import best_time, random_weight

from smallmind._core import _matmul
from smallmind.tensors import GGMLType


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--types", default="Q4_K,Q5_K,Q6_K")
    ap.add_argument("--ns", default="1,2,4,8,64,256")
    ap.add_argument("--shapes", default="640x1024,640x2048")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    min_time, repeats = (0.1, 3) if args.quick else (0.4, 5)
    rows_out = []
    for name in args.types.split(","):
        for shape in args.shapes.split(","):
            rows, cols = (int(v) for v in shape.split("x"))
            w = random_weight(GGMLType[name], rows, cols, rng)
            for n in (int(v) for v in args.ns.split(",")):
                x = rng.standard_normal((n, cols), dtype=np.float32)
                y = np.empty((n, rows), np.float32)
                s = best_time(lambda it: _matmul._bench(w, x, y, 1, it, True), min_time, repeats)
                row = {"type": name, "shape": shape, "n": n, "us": s * 1e6, "GMAC/s": rows * cols * n / s / 1e9}
                rows_out.append(row)
                print(f"{name} {shape:>9} n={n:<4} {row['us']:9.1f} us  {row['GMAC/s']:6.2f} GMAC/s", flush=True)
    print()
    meta = machine_info() | {"kernels": _matmul._isa(), "timing": "thread CPU time, 1 thread, best of repeats"}
    write_report("kquant", rows_out, ["type", "shape", "n", "us", "GMAC/s"], meta, args.json)


if __name__ == "__main__":
    main()
