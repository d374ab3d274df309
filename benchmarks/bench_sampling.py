"""Cost of one ``Sampler.sample()`` call, beside a straightforward NumPy sampler.

    python benchmarks/bench_sampling.py [--quick] [--scale S] [--json PATH]

Logits are N(0, S^2) float32 (S = 2 by default: flatter than a trained LM, which makes
top-p keep thousands of tokens on large vocabularies, the expensive case). Each row is
the best of several samples of back-to-back calls (``_report.best_time``), so it is the
per-token cost in a decode loop, Python call overhead included. Vocabularies: 256 (the
seed workload's byte model), 49,152 (SmolLM2) and 262,144 (Gemma 3).

The NumPy column does the same chain the obvious way (softmax over the vocabulary,
argpartition / sort for top-k and top-p, ``Generator.choice``), for scale.
Results go to benchmarks/results/sampling.json unless --json names another path.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402

import numpy as np  # noqa: E402
from _report import best_time, machine_info, write_report  # noqa: E402

from smallmind.sampling import Sampler, SamplingParams  # noqa: E402

CONFIGS = [
    ("temperature 0.8", dict(temperature=0.8)),
    ("greedy", dict(temperature=0.0)),
    # what compare.py and decode_budget decode with: greedy, the stop tokens banned
    ("greedy, 2 tokens banned", dict(temperature=0.0, logit_bias={1: float("-inf"), 106: float("-inf")})),
    ("min_p 0.05", dict(temperature=0.8, min_p=0.05)),
    ("top_k 40", dict(temperature=0.8, top_k=40)),
    ("top_k 40 + top_p 0.95", dict(temperature=0.8, top_k=40, top_p=0.95)),
    ("top_p 0.95", dict(temperature=0.8, top_p=0.95)),
    ("top_k 1000", dict(temperature=0.8, top_k=1000)),
    ("rep. penalty 1.1 (64-token window)", dict(temperature=0.8, repetition_penalty=1.1)),
]


def numpy_sample(x: np.ndarray, rng: np.random.Generator, temperature: float = 0.8,
                 top_k=None, top_p=None, min_p=None, repetition_penalty=1.0, history=None,
                 logit_bias=None) -> int:
    x = x.astype(np.float64)
    for token, value in (logit_bias or {}).items():
        x[token] += value
    if repetition_penalty != 1.0 and history is not None:
        seen = np.unique(history[-64:])
        v = x[seen]
        x[seen] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
    if temperature == 0:
        return int(np.argmax(x))
    ids = np.arange(x.size)
    if top_k and top_k < x.size:
        ids = np.argpartition(-x, top_k - 1)[:top_k]
    if top_p is not None or min_p is not None:
        ids = ids[np.argsort(-x[ids], kind="stable")]
        p = np.exp(x[ids] - x[ids].max())
        p /= p.sum()
        if top_p is not None:
            ids = ids[: int(np.searchsorted(np.cumsum(p), top_p)) + 1]
        if min_p is not None:
            ids = ids[p[: ids.size] >= min_p * p[0]]
    w = np.exp((x[ids] - x[ids].max()) / temperature)
    return int(ids[rng.choice(ids.size, p=w / w.sum())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    rows = []
    for vocab in (256, 49152, 262144):
        x = (rng.standard_normal(vocab) * args.scale).astype(np.float32)
        history = rng.integers(0, vocab, 512).astype(np.int32)
        for name, kw in CONFIGS:
            sampler = Sampler(SamplingParams(seed=1, **kw), vocab)
            ours = best_time(lambda: sampler.sample(x, history), repeat=repeat)
            np_rng = np.random.default_rng(1)
            ref = best_time(lambda: numpy_sample(x, np_rng, history=history, **kw),
                            repeat=max(2, repeat // 2), min_sample_s=0.01)
            rows.append({"vocab": vocab, "config": name, "smallmind_us": ours * 1e6,
                         "numpy_us": ref * 1e6, "speedup": ref / ours})
    meta = machine_info()
    meta["logit_scale"] = args.scale
    write_report("sampling", rows, ["vocab", "config", "smallmind_us", "numpy_us", "speedup"],
                 meta=meta, json_path=args.json)


if __name__ == "__main__":
    main()
