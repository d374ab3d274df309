"""Where a decoded token's time goes: the matrix products against everything else.

    python benchmarks/decode_budget.py [--quick] [--models NAMES] [--threads 1,2]
                                       [--new-tokens 128] [--json PATH]

For each model (compare.py's names; default SmolLM2 Q4_1 and Gemma 3 270M) and thread
count, in one process: greedy decoding of ``--new-tokens`` tokens after compare.py's short
prompt (end-of-text banned, so every run decodes the same count), best of N runs (N = 3 with
--quick, else 5) of

* ``decode us``: Engine.generate's decode time per token, unprofiled (what compare.py
  reports as tok/s);
* the same generation under ``smallmind.profile(track_alloc=False)`` (the best of N runs
  by the ops' total): every op's time per token. ``matmul us`` is the matrix products of the
  layers and the head (their steps end in ``_matmul``, and ``lm_head``, which includes its
  final norm and the search for the largest logit that spares greedy sampling its passes);
  ``head us`` is lm_head alone (a large vocabulary's output matrix is most of the bytes a
  token reads); the other ops each get a column (attention, rope, kv_store, norms,
  activation, sampling ...);
* ``rest us``: the unprofiled decode time less every timed op, i.e. what no op covers: the
  Python of the decode loop and of ``forward``, and the gaps between layers. The profile's
  ``python.forward`` and ``profiler`` rows are left out: the first is that same Python, the
  second the profiler's own bookkeeping, which an unprofiled run does not have.

Then the thread scaling: decode time at one thread over decode time at each thread count,
beside the same ratio of this machine's read bandwidth (benchmarks/roofline.py's read loop,
measured first, in this run): decoding streams the weights, so where they exceed the caches
it scales about as the memory does, not as the core count. ``ideal us`` is the first row's
decode time over that bandwidth ratio (the token if everything scaled as the memory does);
``excess us`` the decode time beyond it: serial work (attention at short contexts, norms,
sampling, Python), the pool's jobs, and imbalance at their ends.

``jobs``: pool jobs per token (run with workers). ``wait us``: per token, the time the calling thread waited at the ends of pool jobs for a
worker to finish the work it had claimed (imbalance, or a worker descheduled), in the
unprofiled run; ``quiet %``: the share of that run's pool jobs during which the workers slept
between jobs instead of spinning, having seen contention (each such job wakes them through
the kernel). Both from the pool's own counters (``_matmul._pool_counters``).

``pool job us`` (measured right before each row, best of many): what one job of the thread
pool costs beyond its work, for a job of 2 chunks of 5 us (the caller takes one, a worker the
other): publishing it, the worker finding it (spinning, or woken from a futex when it slept)
and the join. A decode step runs ~4 such jobs per layer (QKV, output, gate+up, down) and the
head's, so ``jobs x pool job us`` is the dispatch part of ``excess us``.

Timings on a shared machine are noisy: compare rows of one run, and the ``load`` column (the
1-minute load average when the row finished). Writes JSON (default
benchmarks/results/decode_budget.json).
"""
from __future__ import annotations

import argparse
import os

from _report import machine_info, write_report
from compare import DECODE_PROMPT, present_models, read_bandwidths

DEFAULT_MODELS = "SmolLM2-135M-Instruct Q4_1,Gemma 3 270M Q4_K_M"
# Ops reported in their own column, in this order (any other non-matmul op goes to "other us").
OWN_COLUMNS = ("attention", "rope", "kv_store", "activation", "sampling")
MATMUL_OPS = ("lm_head",)
# Profile rows that are not ops of an unprofiled decode (see "rest us" above).
NOT_OPS = ("python.forward", "profiler")


def _is_matmul(op: str) -> bool:
    return op.endswith("_matmul") or op in MATMUL_OPS


POOL_CHUNK_US = 5.0


def pool_job_us(threads: int, iters: int = 200, repeats: int = 15) -> float:
    """Cost of one pool job beyond its work (2 chunks of POOL_CHUNK_US), best of repeats."""
    from smallmind._core import _matmul
    chunks = 2
    work = chunks * POOL_CHUNK_US / min(threads, chunks)
    best = min(_matmul._bench_pool(threads, chunks, POOL_CHUNK_US, iters) for _ in range(repeats)) / iters
    return best * 1e6 - work


def tsc_hz() -> float:
    """The rate of the TSC the pool's counters count in."""
    import time

    from smallmind._core import _matmul
    c0, t0 = _matmul._pool_counters()["tsc"], time.perf_counter()
    time.sleep(0.05)
    c1, t1 = _matmul._pool_counters()["tsc"], time.perf_counter()
    return (c1 - c0) / (t1 - t0)


def budget(engine, threads: int, runs: int, n_new: int) -> dict:
    from smallmind import profile
    tok = engine.tokenizer
    ids = tok.encode(DECODE_PROMPT)
    banned = {int(t): float("-inf") for t in tok.stop_ids()}

    def generate():
        r = engine.generate(ids, max_new_tokens=n_new, temperature=0.0, logit_bias=banned,
                            n_threads=threads)
        if len(r.tokens) != n_new:
            raise RuntimeError(f"{len(r.tokens)} of {n_new} tokens ({r.finish_reason})")
        return r

    from smallmind._core import _matmul
    generate()  # warm-up
    hz, decode_us, pool = tsc_hz(), float("inf"), {}
    for _ in range(runs):  # the fastest run, and the pool's counters over it
        before = _matmul._pool_counters()
        us = generate().timings.decode_ms / (n_new - 1) * 1e3
        after = _matmul._pool_counters()
        if us < decode_us:
            decode_us, pool = us, {k: after[k] - before[k] for k in ("jobs", "quiet_jobs", "wait_cycles")}
    per_op: dict[str, float] = {}
    for _ in range(runs):  # the profiled run whose ops took least: the least disturbed one
        with profile(track_alloc=False) as prof:
            generate()
        ops = {row["name"]: row["total_ms"] / n_new * 1e3 for row in prof.summary()
               if row["name"] not in NOT_OPS}
        if not per_op or sum(ops.values()) < sum(per_op.values()):
            per_op = ops
    row = {"threads": threads, "decode us": decode_us, "pool job us": pool_job_us(threads),
           "matmul us": sum(us for op, us in per_op.items() if _is_matmul(op)),
           "head us": per_op.get("lm_head", 0.0)}
    for op in OWN_COLUMNS:
        row[f"{op} us"] = per_op.get(op, 0.0)
    row["other us"] = sum(us for op, us in per_op.items()
                          if not _is_matmul(op) and op not in OWN_COLUMNS)
    row["rest us"] = max(decode_us - sum(per_op.values()), 0.0)
    row["jobs"] = pool["jobs"] / n_new
    row["wait us"] = pool["wait_cycles"] / hz / n_new * 1e6
    row["quiet %"] = 100 * pool["quiet_jobs"] / max(pool["jobs"], 1)
    row["matmul %"] = 100 * row["matmul us"] / decode_us
    row["load"] = os.getloadavg()[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs per row instead of 5")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list of compare.py model names")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--json", default=None, help="output JSON path")
    args = ap.parse_args()
    from smallmind import Engine
    threads = [int(t) for t in args.threads.split(",")]
    runs = 3 if args.quick else 5
    bandwidth = read_bandwidths(threads, args.quick)
    rows: list[dict] = []
    for name, path in present_models(args.models, rows):
        engine = Engine.load(path, n_ctx=512)
        model_rows = [budget(engine, t, runs, args.new_tokens) for t in threads]
        base = model_rows[0]
        for r in model_rows:
            r["model"] = name
            r["speedup vs first"] = base["decode us"] / r["decode us"]
            r["read GB/s ratio"] = bandwidth[r["threads"]] / bandwidth[base["threads"]]
            r["ideal us"] = base["decode us"] / r["read GB/s ratio"]
            r["excess us"] = r["decode us"] - r["ideal us"]
        rows += model_rows
    columns = ["model", "threads", "decode us", "matmul us", "matmul %", "head us",
               *(f"{op} us" for op in OWN_COLUMNS), "other us", "rest us", "speedup vs first",
               "read GB/s ratio", "ideal us", "excess us", "jobs", "wait us", "quiet %", "pool job us",
               "load"]
    meta = machine_info() | {"read_GBps": bandwidth, "new_tokens": args.new_tokens, "runs": runs}
    write_report("decode_budget", rows, columns, meta, args.json)


if __name__ == "__main__":
    main()
