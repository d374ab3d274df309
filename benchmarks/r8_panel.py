"""Repacked (r8) products against many activation rows: the default path (unpacked panels from
n = 8 for Q5_0/Q5_1, n = 12 for Q4_0/Q4_1; 8 x 4 tiles below and for Q8_0) against the tiles alone.

    python benchmarks/r8_panel.py [--ns 2,7,64,128,256] [--repeats 7] [--threads 1]
    python benchmarks/r8_panel.py --prompt MODEL.gguf [--threads 1,2]   (256-token prompt tok/s)

Both are in the same build (_matmul._set_r8_panel(False) forces the tiles), so each shape is
timed tile, default, tile, default, ... in one process and the best of each is kept: the ratio
holds on a machine that other processes share. 1-thread times are the thread's CPU time.
Shapes: Gemma 3 270M's Q5_0 and Q8_0 matrices and SmolLM2-135M's Q4_1 ones (rows x cols).
Results go to benchmarks/results/r8_panel.json and a readable table.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _report import machine_info, write_report  # noqa: E402
from compare import PROMPT_TEXT_FILE, PROMPT_TOKENS  # noqa: E402

from smallmind._core import _matmul  # noqa: E402
from smallmind.tensors import BLOCK_LAYOUT, GGMLType  # noqa: E402

SHAPES = [("Q5_0", 2048, 640), ("Q5_0", 1024, 640), ("Q5_0", 256, 640), ("Q8_0", 256, 640),
          ("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q4_1", 576, 576), ("Q4_1", 192, 576)]


def random_weight(name: str, rows: int, cols: int, rng: np.random.Generator) -> _matmul.Weight:
    block, nbytes = BLOCK_LAYOUT[GGMLType[name]]
    data = rng.integers(0, 256, (rows * cols // block, nbytes), dtype=np.uint8)
    data[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # d (and m) finite
    if name in ("Q4_1", "Q5_1"):
        data[:, 2:4] = data[:, 0:2]
    return _matmul.Weight(int(GGMLType[name]), (rows, cols), data.reshape(-1))


def best_pair(w: _matmul.Weight, n: int, threads: int, repeats: int) -> tuple[float, float]:
    """Best seconds per product of the tiles alone and of the default path, interleaved."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
    out = np.empty((n, w.shape[0]), np.float32)
    iters = max(1, int(2e8 // (w.shape[0] * w.shape[1] * n)))
    best = {False: np.inf, None: np.inf}
    old = _matmul._set_r8_panel(False)
    try:
        for _ in range(repeats):
            for mode in best:
                _matmul._set_r8_panel(mode)
                t = _matmul._bench(w, x, out, threads, iters, cpu_time=threads == 1) / iters
                best[mode] = min(best[mode], t)
    finally:
        _matmul._set_r8_panel(old)
    return best[False], best[None]


def prompt_pair(path: str, threads: int, repeats: int) -> tuple[float, float]:
    """Best prompt tokens/s of a 256-token prompt with the tiles alone and the default path."""
    from smallmind import Engine

    engine = Engine.load(path, n_threads=threads)
    ids = engine.tokenizer.encode(PROMPT_TEXT_FILE.read_text(encoding="utf-8"))[:PROMPT_TOKENS]
    best = {False: 0.0, None: 0.0}
    old = _matmul._set_r8_panel(False)
    try:
        engine.generate(ids, max_new_tokens=1, temperature=0)
        for _ in range(repeats):
            for mode in best:
                _matmul._set_r8_panel(mode)
                tps = engine.generate(ids, max_new_tokens=1, temperature=0).timings.prompt_tokens_per_s
                best[mode] = max(best[mode], tps)
    finally:
        _matmul._set_r8_panel(old)
    return best[False], best[None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="2,7,64,128,256")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--prompt", default=None, help="a GGUF model: time its 256-token prompt instead")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.prompt:
        for t in (int(v) for v in args.threads.split(",")):
            tile, default = prompt_pair(args.prompt, t, args.repeats)
            print(f"{pathlib.Path(args.prompt).name} threads {t}: prompt tiles {tile:.0f} tok/s, "
                  f"default {default:.0f} tok/s, x{default / tile:.2f}", flush=True)
        return
    threads = int(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for name, r, c in SHAPES:
        w = random_weight(name, r, c, rng)
        for n in (int(v) for v in args.ns.split(",")):
            tile, default = best_pair(w, n, threads, args.repeats)
            gops = 2 * r * c * n / 1e9
            rows.append({"type": name, "rows": r, "cols": c, "n": n, "threads": threads,
                         "tile_ms": round(tile * 1e3, 4), "default_ms": round(default * 1e3, 4),
                         "tile_gops": round(gops / tile, 1), "default_gops": round(gops / default, 1),
                         "speedup": round(tile / default, 3)})
            print(f"{name} {r:5d}x{c:<5d} n={n:<4d} tile {gops / tile:6.1f} GOPS  default {gops / default:6.1f} GOPS"
                  f"  x{tile / default:.2f}", flush=True)
    print()
    write_report("r8_panel", rows, list(rows[0]), machine_info(), args.json)


if __name__ == "__main__":
    main()
