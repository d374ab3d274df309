"""The seed workload benchmark (``smallmind bench``, ``benchmarks/seed_workload.py``).

The seed document's C# engine ran a 470,528-parameter GPT-2 style model (vocab 256,
context 64, 128 wide, 2 layers, 4 heads) on a 10-token prompt, 50 new tokens sampled at
temperature 0.8, 3 sessions, and reported 7.7 tok/s (its own timings give ~77) and
7.2 MB allocated per token. This reruns that workload, single-threaded.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

CSHARP = {"tok_per_s_claimed": 7.7, "tok_per_s_measured": 77.0, "bytes_per_token": 7.2e6}
PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114]  # b"Hello, wor"
NEW_TOKENS = 50
SESSIONS = 3


def _engine(model: str | None = None):
    from .engine import Engine
    from .models.config import ModelConfig
    if model is not None:
        return Engine.load(model, n_threads=1)
    return Engine.from_config(ModelConfig.seed_small(), seed=42, n_threads=1)


def _workload_cached(engine) -> int:
    n = 0
    for s in range(SESSIONS):
        n += len(engine.generate(PROMPT, max_new_tokens=NEW_TOKENS, temperature=0.8, seed=s).tokens)
    return n


def _workload_uncached(engine) -> int:
    """The same sampling with no KV cache: every step recomputes the whole sequence."""
    from .sampling import Sampler, SamplingParams
    n = 0
    for s in range(SESSIONS):
        sampler = Sampler(SamplingParams(temperature=0.8, seed=s), engine.config.vocab_size)
        seq = list(PROMPT)
        for _ in range(NEW_TOKENS):
            logits = engine.logits(seq)[-1]
            seq.append(sampler.sample(logits, np.asarray(seq, dtype=np.int32)))
            n += 1
    return n


def _best_rate(fn, engine, repeats: int) -> tuple[float, float]:
    best = float("inf")
    n = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn(engine)
        best = min(best, time.perf_counter() - t0)
    return n / best, best * 1e3 / n


def _allocations(engine) -> dict:
    """tracemalloc (which sees numpy's buffers) over the 3 sessions, after a warm-up.

    retained: bytes still held after the run, per decoded token (leaks, growing lists).
    peak_transient: the most extra memory alive at any moment during the run, per token.
    """
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        _workload_cached(engine)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        n = _workload_cached(engine)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return {"retained_bytes_per_token": max(after - before, 0) / n,
            "peak_transient_bytes": max(peak - before, 0),
            "peak_transient_bytes_per_token": max(peak - before, 0) / n}


def run_seed_workload(quick: bool = False, model: str | None = None) -> dict:
    """The workload on the seed model (random seed-42 weights), or on ``model`` (a file)."""
    engine = _engine(model)
    _workload_cached(engine)  # warm up: pools, caches, first-call costs
    repeats = 3 if quick else 20
    cached_tps, cached_ms = _best_rate(_workload_cached, engine, repeats)
    uncached_tps, uncached_ms = _best_rate(_workload_uncached, engine, 1 if quick else 3)
    alloc = _allocations(engine)
    return {
        "workload": {"model": model or "seed_small (random, seed 42)",
                     "params": engine.config.n_params(), "prompt_tokens": len(PROMPT),
                     "new_tokens": NEW_TOKENS, "sessions": SESSIONS, "temperature": 0.8,
                     "threads": 1, "repeats": repeats, "timing": "best of repeats, end to end "
                     "incl. prefill and sampling"},
        "kv_cache": {"tok_per_s": cached_tps, "ms_per_token": cached_ms},
        "no_kv_cache": {"tok_per_s": uncached_tps, "ms_per_token": uncached_ms},
        "allocations": alloc,
        "csharp": CSHARP,
        "speedup_vs_csharp_measured": cached_tps / CSHARP["tok_per_s_measured"],
    }


def format_table(r: dict) -> str:
    a = r["allocations"]
    cs = r["csharp"]
    rows = [
        ("seed workload, KV cache", f"{r['kv_cache']['tok_per_s']:,.0f}",
         f"{r['kv_cache']['ms_per_token']:.4f}", f"{a['retained_bytes_per_token']:.1f} retained, "
         f"{a['peak_transient_bytes']:,} peak transient",
         f"{cs['tok_per_s_claimed']} claimed / ~{cs['tok_per_s_measured']:.0f} measured"),
        ("seed workload, no KV cache", f"{r['no_kv_cache']['tok_per_s']:,.0f}",
         f"{r['no_kv_cache']['ms_per_token']:.4f}", "-", "-"),
    ]
    w = r["workload"]
    head = (f"Model: {w['model']}, {w['params']:,} parameters; {w['prompt_tokens']}-token prompt, "
            f"{w['new_tokens']} new tokens, {w['sessions']} sessions, 1 thread\n\n"
            "| run | tok/s | ms/token | bytes/token | C# engine tok/s |\n|---|---:|---:|---|---|\n")
    body = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return (head + body + f"\n\nC# allocated {cs['bytes_per_token'] / 1e6:.1f} MB/token; "
            f"speed-up vs its measured ~77 tok/s: {r['speedup_vs_csharp_measured']:,.0f}x")
