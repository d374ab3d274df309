"""Prompt processing and the share of it that is attention.

    python benchmarks/prompt_attention.py [--quick] [--models NAMES] [--threads 1,2]
                                          [--tokens 256,1024] [--json PATH]

For each model (compare.py's names; default SmolLM2 Q4_1 and Gemma 3 270M), prompt length
(the first N tokens of compare.py's prompt text, repeated as needed) and thread count, in one
process: ``prompt tok/s``, the best of N unprofiled prompts (Engine.generate's prompt time,
one new token); then the same prompt under ``smallmind.profile(track_alloc=False)``, best of
N by the attention op's time: ``attention ms`` (every layer's attention step, one prompt) and
``attention %`` of the profiled ops.

To compare two trees (A/B), run it with each on PYTHONPATH, alternating, and quote the ratios
of rows of neighbouring runs: on a shared machine absolute figures drift between runs. Writes
JSON (default benchmarks/results/prompt_attention.json).
"""
from __future__ import annotations

import argparse
import os

from _report import machine_info, write_report
from compare import PROMPT_TEXT_FILE, present_models

DEFAULT_MODELS = "SmolLM2-135M-Instruct Q4_1,Gemma 3 270M Q4_K_M"


def prompt_ids(engine, n: int) -> list[int]:
    ids = engine.tokenizer.encode(PROMPT_TEXT_FILE.read_text())
    return (ids * (n // len(ids) + 1))[:n]


def measure(engine, ids: list[int], threads: int, runs: int) -> dict:
    from smallmind import profile

    def prompt():
        return engine.generate(ids, max_new_tokens=1, temperature=0.0, n_threads=threads)

    prompt()  # warm-up
    tok_s = max(prompt().timings.prompt_tokens_per_s for _ in range(runs))
    att_ms, total_ms = float("inf"), 0.0
    for _ in range(runs):
        with profile(track_alloc=False) as prof:
            prompt()
        rows = prof.summary()
        ms = sum(r["total_ms"] for r in rows if r["name"] == "attention")
        if ms < att_ms:
            att_ms, total_ms = ms, sum(r["total_ms"] for r in rows)
    return {"threads": threads, "tokens": len(ids), "prompt tok/s": tok_s, "attention ms": att_ms,
            "attention %": 100 * att_ms / total_ms if total_ms else 0.0, "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 runs per row instead of 4")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list of compare.py model names")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--tokens", default="256", help="comma list of prompt lengths")
    ap.add_argument("--json", default=None, help="output JSON path")
    args = ap.parse_args()
    from smallmind import Engine
    runs = 2 if args.quick else 4
    lengths = [int(n) for n in args.tokens.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict] = []
    for name, path in present_models(args.models, rows):
        engine = Engine.load(path, n_ctx=max(lengths) + 8)
        for n in lengths:
            ids = prompt_ids(engine, n)
            rows += [{"model": name} | measure(engine, ids, t, runs) for t in threads]
    columns = ["model", "tokens", "threads", "prompt tok/s", "attention ms", "attention %", "load"]
    write_report("prompt_attention", rows, columns, machine_info() | {"runs": runs}, args.json)


if __name__ == "__main__":
    main()
