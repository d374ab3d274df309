"""Two builds of the attention kernel against each other: decode (and prompt) attention over
every layer's KV cache, the builds alternated in fresh processes.

    cp smallmind/_core/_attention*.so /tmp/att_base.so    # in the base tree, built
    python benchmarks/attention_ab.py --base /tmp/att_base.so [--rounds 5] [--threads 1,2]
        [--models SmolLM2,Gemma3] [--cases 1500x1,100x1,1436x64]

Each round is one process that loads both builds' ``_attention`` extensions (this tree's
``smallmind`` for everything else), fills a model's KV caches in the engine's layout (one
(n_layer, n_kv_head, capacity, head_dim) array each for K and V, capacity 8192) and times
``attention`` over all layers with each build in turn: best of 12 passes each, thread CPU
time at 1 thread, wall time at more. A whole pass streams the caches from memory, as a
decode step does once the weights have gone through the caches. Both builds read the same
pages (a fresh process maps the caches differently, which moves the rate by +-15%), and
they swap places each round; the ratio is the median of the rounds' own base/new ratios,
with the range. Both builds must give the same bits. Shapes: SmolLM2-135M (30 layers, 9 query heads on 3 KV
heads of 64) and Gemma 3 270M (18 layers, 4 on 1 of 256) at 100 and 1500 cached positions,
one query row, and a 64-row prompt chunk after 1436.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Prints "seconds checksum" for one build and shape.
CHILD = r"""
import importlib.util, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import smallmind._core._matmul  # noqa: F401  (the builds cimport it)
builds = []
for so in sys.argv[2:4]:
    spec = importlib.util.spec_from_file_location("smallmind._core._attention", so)
    builds.append(importlib.util.module_from_spec(spec))
    spec.loader.exec_module(builds[-1])
n_layer, n_head, n_kv, hd, pos, n_q, threads = map(int, sys.argv[4:11])
rng = np.random.default_rng(0)
k = np.zeros((n_layer, n_kv, 8192, hd), dtype=np.float32)
v = np.zeros_like(k)
k[:, :, :pos + n_q] = rng.standard_normal((n_layer, n_kv, pos + n_q, hd), dtype=np.float32)
v[:, :, :pos + n_q] = rng.standard_normal((n_layer, n_kv, pos + n_q, hd), dtype=np.float32)
q = rng.standard_normal((n_q, n_head * hd), dtype=np.float32)
outs = [np.empty_like(q) for _ in builds]
clock = time.thread_time if threads == 1 else time.perf_counter
best = [float("inf")] * len(builds)
for _ in range(12):
    for b, att in enumerate(builds):
        t = clock()
        for layer in range(n_layer):
            att.attention(q, k[layer], v[layer], pos, n_head, n_kv, out=outs[b], n_threads=threads)
        best[b] = min(best[b], clock() - t)
print(*best, np.array_equal(outs[0], outs[1]))
"""
# name: (n_layer, n_head, n_kv_head, head_dim)
MODELS = {"SmolLM2": (30, 9, 3, 64), "Gemma3": (18, 4, 1, 256)}
CASES = "1500x1,100x1,1436x64"  # cached positions x query rows


def sample(first: Path, second: Path, shape: tuple[int, ...]) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(first), str(second), *map(str, shape)],
                         capture_output=True, text=True, check=True).stdout.split()
    if out[2] != "True":
        raise SystemExit(f"{shape}: the builds' results differ")
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the base build's _attention .so")
    ap.add_argument("--new", type=Path, default=next((ROOT / "smallmind/_core").glob("_attention.*.so"), None),
                    help="the new build's .so (default: this tree's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default="1", help="comma list of thread counts")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--cases", default=CASES, help="comma list of CACHEDxROWS")
    args = ap.parse_args()
    print("| model | cached | rows | threads | base ms | new ms | KV GB/s base / new | base/new median (range) |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        for name in args.models.split(","):
            n_layer, n_head, n_kv, hd = MODELS[name]
            for pos, n_q in (map(int, case.split("x")) for case in args.cases.split(",")):
                shape = (n_layer, n_head, n_kv, hd, pos, n_q, threads)
                base, new, ratios = [], [], []
                for rnd in range(args.rounds):
                    if rnd % 2 == 0:
                        b, n = sample(args.base, args.new, shape)
                    else:
                        n, b = sample(args.new, args.base, shape)
                    base.append(b)
                    new.append(n)
                    ratios.append(b / n)
                gb = n_layer * 2 * n_kv * (pos + n_q) * hd * 4 / 1e9
                print(f"| {name} | {pos} | {n_q} | {threads} | {min(base) * 1e3:.2f} | {min(new) * 1e3:.2f} | "
                      f"{gb / min(base):.1f} / {gb / min(new):.1f} | {statistics.median(ratios):.3f} "
                      f"({min(ratios):.3f}-{max(ratios):.3f}) |", flush=True)


if __name__ == "__main__":
    main()
