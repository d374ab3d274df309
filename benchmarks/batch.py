"""Batched decoding: aggregate decode tok/s of Engine.generate_batch for 1, 2, 4, 8, 16
sequences against one sequence's Engine.generate, in the same run.

    python benchmarks/batch.py [--model FILE] [--threads 2] [--new 64] [--sizes 1,2,4,8,16]
                               [--step-temperature 0.7] [--skip-matmul]

Every sequence decodes exactly --new tokens (its end-of-sequence tokens are suppressed with
logit_bias), greedy. A batch's decode time is its wall time less its prompts' prefill time
(the prompts are prefilled one after the other before the batch decodes); with --threads 1
the rates from CPU time are shown too (a shared machine distorts them less). A second table
gives the matrix products alone: one pass over every layer matrix of the model for n rows at
once (what one batched decode step does), wall time on --threads and CPU time on one thread
(least distorted by a loaded machine), as rows per second against n = 1. A third splits one
batched decode step, sampled as the server samples (told each row's peak by the head), into its
parts (matrix products, attention, the layers' other steps, inputs and head, sampling with the
per-sequence Python, also per token). A fourth times a decode step's head and greedy sampling on
n rows both ways, in alternation: the head finding each row's peak and the samplers told it,
against one product without peaks and samplers scanning the logits (wall time on --threads, CPU
time on one thread). Default model:
SmolLM2-135M-Instruct Q4_1 from ~/.cache/smallmind (python tools/fetch_models.py). Writes
benchmarks/results/batch.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _report import machine_info, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from smallmind import Engine  # noqa: E402
from smallmind._core._matmul import _bench_sweep  # noqa: E402
from smallmind.batch import Decoder  # noqa: E402
from smallmind.sampling import Sampler, SamplingParams  # noqa: E402
from smallmind.session import Session  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache" / "smallmind" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 4,",
           "Dear diary, today", "The best way to learn", "In the beginning", "Here is a recipe for",
           "The weather today", "My favourite book is", "Q: What is 2+2?\nA:", "import numpy as np\n",
           "Roses are red,", "The quick brown fox", "Breaking news:", "To whom it may concern,"]


def end_banned(engine: Engine) -> dict[int, float]:
    """A logit bias that keeps every sequence from ending (its end-of-text tokens at -100)."""
    tok = engine.tokenizer
    return {t: -100.0 for t in (tok.stop_ids() if tok is not None else ())}


def decode_rates(engine: Engine, sizes: list[int], n_new: int) -> list[dict]:
    no_end = end_banned(engine)
    sampling = dict(max_new_tokens=n_new, temperature=0.0, logit_bias=no_end)
    engine.generate(PROMPTS[0], **sampling)  # warm up
    c0 = time.thread_time()
    result = engine.generate(PROMPTS[0], **sampling)
    single = result.timings.decode_tokens_per_s
    # On one thread, this thread's CPU time is all the work: a rate a loaded machine distorts less.
    single_cpu = (n_new - 1) / (time.thread_time() - c0 - result.timings.prompt_ms / 1e3)
    rows = [{"sequences": "1 (generate)", "decode tok/s": single, "per sequence": single, "vs one": 1.0,
             "CPU tok/s": single_cpu, "CPU vs one": 1.0}]
    for n in sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(n)]
        t0, c0 = time.perf_counter(), time.thread_time()
        results = engine.generate_batch(prompts, max_batch=n, **sampling)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        prefill_s = sum(r.timings.prompt_ms for r in results) / 1e3
        tokens = sum(len(r.tokens) for r in results)
        assert tokens == n * n_new, "a sequence ended early"
        rate = (tokens - n) / (wall - prefill_s)  # each sequence's first token comes from its prefill
        cpu_rate = (tokens - n) / (cpu - prefill_s)
        rows.append({"sequences": n, "decode tok/s": rate, "per sequence": rate / n, "vs one": rate / single,
                     "CPU tok/s": cpu_rate, "CPU vs one": cpu_rate / single_cpu})
    return rows


def step_breakdown(engine: Engine, sizes: list[int], n_steps: int, temperature: float = 0.7) -> list[dict]:
    """Where one batched decode step of n sequences spends its wall time, as the server runs it
    (``temperature``, end-of-text banned by logit_bias): the layers' matrix products, attention,
    the layers' other steps (norms, rope, KV stores, activation), the rest of the forward pass
    (inputs, output norm and the vocabulary matrix), and sampling with each sequence's Python
    book-keeping. Medians over ``n_steps`` steps after the prompts."""
    model = engine.model
    names = model.steps.names
    no_end = end_banned(engine)
    rows = []
    for n in sizes:
        params = SamplingParams.build(None, max_new_tokens=n_steps + 1, temperature=temperature,
                                      logit_bias=no_end)
        sessions = [Session(engine) for _ in range(n)]
        batch = model.new_batch(max_seqs=n, capacity=engine.n_ctx, n_threads=engine.n_threads)
        timings = np.zeros((len(model.layers), 1 + len(names)))
        parts: dict[str, list[float]] = {k: [] for k in ("step", "matmul", "attention", "other", "head", "sample")}
        try:
            decoders, last = [], []
            for i, s in enumerate(sessions):
                ids = s._encode_prompt(PROMPTS[i % len(PROMPTS)], None)
                dec = Decoder(engine, SamplingParams.build(params, seed=i), ids, ids, s.capacity)
                s.tokens.extend(ids)
                chunk = dec.step(s._forward(ids, None).copy(), s._peak)
                decoders.append(dec)
                last.append(chunk.token if chunk is not None else 0)
            for _ in range(n_steps):
                t0 = time.perf_counter()
                fwd = model.forward_batch(batch, [(s._state, [t]) for s, t in zip(sessions, last, strict=True)],
                                          timings=timings)
                t1 = time.perf_counter()
                last = [c.token if (c := d.step(row, int(peak))) is not None else 0
                        for d, row, peak in zip(decoders, fwd.logits, fwd.peaks, strict=True)]
                t2 = time.perf_counter()
                per_step = dict(zip(names, timings[:, 1:].sum(axis=0) / 1e9, strict=True))
                layers = sum(per_step.values())
                matmul = sum(v for k, v in per_step.items() if "matmul" in k)
                attention = per_step.get("attention", 0.0)
                for key, value in (("step", t2 - t0), ("matmul", matmul), ("attention", attention),
                                   ("other", layers - matmul - attention), ("head", t1 - t0 - layers),
                                   ("sample", t2 - t1)):
                    parts[key].append(value)
        finally:
            batch.close()
            for s in sessions:
                s.close()
        med = {k: statistics.median(v) * 1e3 for k, v in parts.items()}
        rows.append({"sequences": n, "ms per step": med["step"], "tok/s": n / med["step"] * 1e3,
                     "matmul ms": med["matmul"], "attention ms": med["attention"],
                     "other layer steps ms": med["other"], "inputs + head ms": med["head"],
                     "sampling + Python ms": med["sample"], "sampling us/token": med["sample"] / n * 1e3})
    return rows


def matmul_rates(engine: Engine, sizes: list[int], n_threads: int) -> list[dict]:
    """One pass over every layer matrix for n rows: wall time on n_threads, and CPU time on
    one thread (what a loaded machine distorts least: the kernels' compute per row)."""
    model = engine.model
    weights = [w for layer in model.layers
               for w in (layer.wqkv, layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate, layer.w_up,
                         layer.w_down) if w is not None]
    rows: list[dict] = []
    for n in sorted({1, *sizes}):
        wall = min(_bench_sweep(weights, n, n_threads, 5) for _ in range(3)) / 5
        cpu = min(_bench_sweep(weights, n, 1, 5, True) for _ in range(3)) / 5
        base = rows[0] if rows else {"wall": wall, "cpu": cpu}
        rows.append({"rows": n, "wall": wall, "cpu": cpu, "ms per pass": wall * 1e3,
                     "rows/s vs n=1": n * base["wall"] / wall, "1-thread CPU ms": cpu * 1e3,
                     "CPU rows/s vs n=1": n * base["cpu"] / cpu})
    return rows


def head_rates(engine: Engine, sizes: list[int], n_threads: int, reps: int = 15) -> list[dict]:
    """A batched decode step's head and greedy sampling (end-of-text banned by logit_bias, as in
    the decode table) on n rows of a batch's workspace, both ways in alternation: the head finding
    each row's peak in its units and each row's sampler told it, against one product of the n rows
    without peaks and samplers scanning the logits. Medians of ``reps`` steps, wall time on
    n_threads and this thread's CPU time on one thread."""
    model = engine.model
    no_end = end_banned(engine)
    sampler = Sampler(SamplingParams(temperature=0.0, logit_bias=no_end), engine.config.vocab_size)
    rows: list[dict] = []
    for n in sizes:
        row: dict = {"rows": n}
        for nt, clock, tag in ((n_threads, time.perf_counter, ""), (1, time.thread_time, " 1-thread CPU")):
            batch = model.new_batch(max_seqs=n, capacity=16, n_threads=nt)
            ws = batch.workspace
            ws.arrays["x"][:n] = np.random.default_rng(0).normal(0, 1, size=(n, engine.config.n_embd))
            idx, peaks = np.arange(n, dtype=np.intp), np.full(n, -1, dtype=np.intp)
            out = batch._arrays["logits"][:n]
            times: dict[tuple[bool, str], list[float]] = {(k, p): [] for k in (True, False) for p in "hs"}
            for r in range(reps):
                for told in ((True, False) if r % 2 else (False, True)):
                    t0 = clock()
                    model._head(ws, 0, n, nt, out, rows=idx, peaks=peaks if told else None)
                    t1 = clock()
                    for logits, peak in zip(out, peaks if told else [-1] * n, strict=True):
                        sampler._sample_at(logits, None, int(peak))
                    t2 = clock()
                    times[told, "h"].append(t1 - t0)
                    times[told, "s"].append(t2 - t1)
            batch.close()
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            row |= {f"head ms{tag}": med[True, "h"], f"sampling ms{tag}": med[True, "s"],
                    f"without: head ms{tag}": med[False, "h"], f"without: sampling ms{tag}": med[False, "s"],
                    f"saved ms{tag}": med[False, "h"] + med[False, "s"] - med[True, "h"] - med[True, "s"]}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64, help="tokens each sequence decodes")
    ap.add_argument("--sizes", default="1,2,4,8,16", help="batch sizes")
    ap.add_argument("--step-temperature", type=float, default=0.7,
                    help="temperature of the step breakdown's sampling (0: greedy)")
    ap.add_argument("--skip-matmul", action="store_true", help="leave out the matrix products' table")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "batch.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engine = Engine.load(args.model, n_threads=args.threads)
    decode = decode_rates(engine, sizes, args.new)
    print(f"\n{Path(args.model).name}, {args.threads} threads, {args.new} new tokens per sequence\n")
    dcols = ["sequences", "decode tok/s", "per sequence", "vs one"]
    if args.threads == 1:
        dcols += ["CPU tok/s", "CPU vs one"]
    print(markdown_table(decode, dcols))
    matmul = [] if args.skip_matmul else matmul_rates(engine, sizes, args.threads)
    mcols = ["rows", "ms per pass", "rows/s vs n=1", "1-thread CPU ms", "CPU rows/s vs n=1"]
    if matmul:
        print("\nEvery weight matrix once for n rows (one batched decode step's matrix products)\n")
        print(markdown_table(matmul, mcols))
    steps = step_breakdown(engine, sorted({1, 8} | set(sizes)), args.new - 1, args.step_temperature)
    scols = ["sequences", "ms per step", "tok/s", "matmul ms", "attention ms", "other layer steps ms",
             "inputs + head ms", "sampling + Python ms", "sampling us/token"]
    print(f"\nOne batched decode step as the server runs it (temperature {args.step_temperature}), "
          "median wall time\n")
    print(markdown_table(steps, scols))
    head = head_rates(engine, sorted({8} | set(sizes) - {1}), args.threads)  # one row has its peak either way
    hcols = [c for tag in ("", " 1-thread CPU") for c in (
        f"head ms{tag}", f"sampling ms{tag}", f"without: head ms{tag}", f"without: sampling ms{tag}",
        f"saved ms{tag}")]
    hcols = ["rows"] + hcols
    if head:
        print("\nA decode step's head and greedy sampling of n rows, with each row's peak and without "
              "(median ms per step; saved = without - with)\n")
        print(markdown_table(head, hcols))
    write_json(args.json, {"name": "batch", "meta": {**machine_info(), "model": args.model,
                                                     "threads": args.threads, "new_tokens": args.new},
                           "decode": {"columns": dcols, "rows": decode},
                           "matmul": {"columns": mcols, "rows": matmul},
                           "step": {"columns": scols, "rows": steps},
                           "head": {"columns": hcols, "rows": head}})


if __name__ == "__main__":
    main()
