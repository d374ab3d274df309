"""Resident memory over long use, without calling the garbage collector (issue #9 goal:
< 20 MB growth each).

* 1,000 sessions created, used every 10th time, and dropped (the default model);
* a 100,000-token generation on one session whose cache slides (overflow="shift") on
  stories260K (a rotary model: the embedded GPT-2 has learned positions and cannot slide),
  run as 100 continuing calls of 1,000 tokens, and as one call of 100,000 tokens.

    python benchmarks/memory_growth.py [--tokens 100000]

Writes benchmarks/results/memory_growth.json and prints a table. RSS is /proc/self/status
VmRSS, measured after a warm-up so that first-touch allocations (pool buckets, lazily
imported modules) do not count as growth.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

from _report import machine_info, write_report

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smallmind import Engine


def rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def sessions_row(n: int = 1000) -> dict:
    engine = Engine.default()
    for _ in range(10):
        engine.session().generate("ROMEO:", max_new_tokens=4)
    before, start = rss(), time.perf_counter()
    for i in range(n):
        s = engine.session()
        if i % 10 == 0:
            s.generate("ROMEO:", max_new_tokens=4)
        del s
    return {"workload": f"{n:,} dropped sessions (default model)", "tokens": n // 10 * 4,
            "rss_before_mb": before / 2**20, "growth_mb": (rss() - before) / 2**20,
            "seconds": time.perf_counter() - start}


def sliding_rows(model: Path, tokenizer: Path, total: int) -> list[dict]:
    engine = Engine.load(model, tokenizer=tokenizer, n_threads=1)
    assert engine.tokenizer is not None
    no_eos = {i: -math.inf for i in engine.tokenizer.stop_ids()}  # run the whole distance
    rows = []
    s = engine.session(overflow="shift", n_keep=1)
    s.generate("Once upon a time", max_new_tokens=2000, temperature=1.0, seed=0, logit_bias=no_eos)  # warm-up
    before, start = rss(), time.perf_counter()
    calls, produced = total // 1000, 0
    for i in range(calls):
        produced += len(s.generate("", max_new_tokens=1000, temperature=1.0, seed=i,
                                   logit_bias=no_eos).tokens)
    rows.append({"workload": f"{produced:,} tokens, sliding cache, {calls} calls (stories260K)",
                 "tokens": produced, "rss_before_mb": before / 2**20,
                 "growth_mb": (rss() - before) / 2**20, "seconds": time.perf_counter() - start,
                 "shifts": s._state.cache.shifts})
    s.reset()
    before, start = rss(), time.perf_counter()
    r = s.generate("Once upon a time", max_new_tokens=total, temperature=1.0, seed=1, logit_bias=no_eos)
    rows.append({"workload": f"{len(r.tokens):,} tokens, sliding cache, one call (stories260K; "
                             "the result holds every token and its text)",
                 "tokens": len(r.tokens), "rss_before_mb": before / 2**20,
                 "growth_mb": (rss() - before) / 2**20, "seconds": time.perf_counter() - start,
                 "shifts": s._state.cache.shifts})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--sessions", type=int, default=1000)
    args = ap.parse_args()
    gc.disable()  # the goal is "without the garbage collector": refcounting alone must free
    rows = [sessions_row(args.sessions)]
    models = Path(os.environ.get("SMALLMIND_MODELS", REPO.parent / "shared" / "models"))
    stories = models / "stories260K"
    if (stories / "stories260K.bin").is_file():
        rows += sliding_rows(stories / "stories260K.bin", stories / "tok512.bin", args.tokens)
    else:
        print(f"(no {stories}: set SMALLMIND_MODELS for the sliding-cache rows)", file=sys.stderr)
    for row in rows:
        row["goal_mb"] = 20.0
        row["ok"] = row["growth_mb"] < 20.0
    write_report("memory_growth", rows, ["workload", "growth_mb", "rss_before_mb", "seconds", "ok"],
                 meta=machine_info())


if __name__ == "__main__":
    main()
