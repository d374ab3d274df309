"""smallmind against llama.cpp (llama-cpp-python) on the same GGUF files.

    python benchmarks/compare.py [--quick] [--rounds 1] [--threads 1,2] [--new-tokens 128]
                                 [--context 0]
                                 [--engines smallmind,llama.cpp] [--json PATH] [--png PATH]

Models: stories260K (llama2.c checkpoint converted to ~/.cache/smallmind/stories260K.gguf by
tools/llama2c_to_gguf.py when absent) and SmolLM2-135M-Instruct Q4_1.

Per model, engine and thread count, best of N runs (N=3 with --quick, else 5) of:

* prompt processing: a 256-token prompt (the start of tests/fixtures/smollm2_reference_text.txt
  as each engine tokenises it, BOS included when the model adds one) into an empty cache,
  up to the logits of its last position; prompt tok/s = 256 / that time.
* decode: greedy generation of --new-tokens tokens after a short prompt, with end-of-text
  tokens banned (logit -inf) so both engines produce exactly that many; decode tok/s =
  (new tokens - 1) / time from the first sampled token to the last, i.e. one forward pass
  and one argmax per token. With --context N the decode follows an N-token prompt instead
  (the reference text, repeated as needed): every token then also reads N cached positions.

With --rounds R, the two engines' workers alternate R times (llama.cpp then smallmind, then
the other order, ...), each round best of N runs: a machine whose speed drifts (a shared VM)
then slows both engines alike. The table's rates are the best over all rounds, and each
ratio column is the median of the rounds' own ratios (smallmind's round against the
llama.cpp round measured beside it), with their range in the JSON.

Both engines are timed the same way: wall clock (time.perf_counter) around the work, in a
Python loop. smallmind's figures are its GenerationResult.timings (perf_counter around the
prefill, and from the first sampled token to the end); llama.cpp is driven through the
low-level ctypes API (llama_decode + argmax over llama_get_logits_ith in numpy), and its own
perf counters (llama_perf_context: time inside llama_decode) are reported beside it to show
the Python loop's share. Each engine runs in its own child process so the two OpenMP runtimes
never share a process. llama.cpp runs as it does by default, with its extra buffer types
(weights repacked at load into its row-interleaved layouts where it has them, e.g. Q4_0 and
Q4_K on AVX2), except on CPUs with AMX, where its AMX matmul path faulted on an earlier VM
(see tools/make_logit_fixtures.py): ``--llama-extra-bufts auto`` (the default) turns them
off there only; ``on``/``off`` force either way, and the table says which ran.

Effective weight bandwidth: the weight bytes one decoded token reads (every matrix; the token
embedding only when it is also the output matrix) x smallmind's decode tok/s, and its share of
this machine's read bandwidth at that thread count, measured in the same run before the models
(benchmarks/roofline.py's read loop). Weights only: with --context, the cached keys and
values each token also reads are not counted.

Prints a markdown table, writes JSON (default benchmarks/results/compare.json) and, when
matplotlib is importable, a PNG bar chart (default benchmarks/results/compare.png). Rows of
an engine that is not installed (llama_cpp) or fails are reported as skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))
SHARED = Path(os.environ.get("SMALLMIND_MODELS", REPO.parent / "shared" / "models"))
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
PROMPT_TEXT_FILE = REPO / "tests" / "fixtures" / "smollm2_reference_text.txt"
DECODE_PROMPT = "Once upon a time, in a small village by the sea,"
PROMPT_TOKENS = 256
ENGINES = ("llama.cpp", "smallmind")

#: llama2.c's run.c figure quoted in the project's issue; no run.c is built or measured here.
RUN_C_REPORTED = {"engine": "llama2.c run.c -Ofast", "model": "stories260K",
                  "decode_tok_per_s": 13500.0, "note": "reported, not measured here"}


def model_paths() -> dict[str, Path]:
    return {"stories260K": CACHE / "stories260K.gguf",
            "SmolLM2-135M-Instruct Q4_1": CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf",
            "Gemma 3 270M Q4_K_M": CACHE / "gemma-3-270m-q4_k_m.gguf"}


def present_models(names: str, rows: list[dict]) -> list[tuple[str, Path]]:
    """(name, path) of each of the comma-listed models whose file is cached; a missing one
    adds a "skipped" row to `rows` instead (benchmarks that measure our engine alone)."""
    paths = model_paths()
    present = []
    for name in names.split(","):
        if paths[name].exists():
            present.append((name, paths[name]))
        else:
            rows.append({"model": name, "note": f"skipped: {paths[name]} is missing"})
    return present


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights one decoded token reads: every matrix, except a token embedding that
    is only looked up (one row) because the model has a separate output matrix."""
    from smallmind.formats.gguf import read_gguf
    tensors = read_gguf(path).tensors
    tied = "output.weight" not in tensors
    return sum(int(t.data.nbytes) for name, t in tensors.items()
               if len(t.shape) >= 2 and (tied or name != "token_embd.weight"))


def read_bandwidths(threads: list[int], quick: bool) -> dict[int, float]:
    """This machine's read GB/s per thread count (benchmarks/roofline.py), measured now."""
    from concurrent.futures import ThreadPoolExecutor

    from roofline import READ_MB, aligned_buffer, read_bandwidth
    buf = aligned_buffer(READ_MB << 20)
    with ThreadPoolExecutor(max(threads)) as pool:
        return {t: read_bandwidth(buf, t, 3 if quick else 5, pool, 0.05)["read"] for t in threads}


def ensure_stories_gguf(path: Path) -> str | None:
    """Convert stories260K.bin to GGUF when absent; returns why it is unavailable, or None."""
    if path.exists():
        return None
    src = SHARED / "stories260K" / "stories260K.bin"
    tok = SHARED / "stories260K" / "tok512.bin"
    converter = REPO / "tools" / "llama2c_to_gguf.py"
    for needed in (src, tok, converter):
        if not needed.exists():
            return f"{needed} is missing"
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(converter), str(src), str(path),
                           "--tokenizer", str(tok)], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"conversion failed: {proc.stderr.strip()[-300:]}"
    return None


# -- llama.cpp ------------------------------------------------------------------------------
class LlamaCppRunner:
    """One model and context through llama.cpp's C API (ctypes), no high-level wrapper."""

    def __init__(self, path: Path, n_threads: int, n_ctx: int = 512):
        import llama_cpp as lc
        self.lc = lc
        try:  # llama-cpp-python routes llama.cpp's log through this; keep errors only
            from llama_cpp._logger import set_verbose
            set_verbose(False)
        except ImportError:
            pass
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        # llama.cpp's default is on; its AMX path faulted on an earlier VM (--llama-extra-bufts)
        mparams.use_extra_bufts = os.environ.get("SMALLMIND_BENCH_EXTRA_BUFTS", "1") == "1"
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = False
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self.banned = np.array([t for t in range(self.n_vocab)
                                if lc.llama_vocab_is_eog(self.vocab, t)], dtype=np.int64)
        self.batch = lc.llama_batch_init(512, 0, 1)
        self._row = np.empty(self.n_vocab, dtype=np.float32)

    def close(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        lc = self.lc
        raw = text.encode("utf-8")
        buf = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), add_bos, False)
        if n < 0:
            raise RuntimeError("llama_tokenize: buffer too small")
        return list(buf[:n])

    def reset(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.lc.llama_perf_context_reset(self.ctx)

    def _fill(self, tokens: list[int], pos0: int) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 0
        b.logits[len(tokens) - 1] = 1  # logits of the last position only

    def decode(self, tokens: list[int], pos0: int) -> None:
        self._fill(tokens, pos0)
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax(self) -> int:
        ptr = self.lc.llama_get_logits_ith(self.ctx, -1)
        np.copyto(self._row, np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))
        self._row[self.banned] = -np.inf
        return int(self._row.argmax())

    def top2_gap(self) -> float:
        """Logit (= log-probability) gap between the best two tokens of the last argmax."""
        best2 = -np.partition(-self._row.astype(np.float64), 1)[:2]
        return float(best2[0] - best2[1])

    def perf(self) -> dict:
        data = self.lc.llama_perf_context(self.ctx)
        return {"t_p_eval_ms": data.t_p_eval_ms, "t_eval_ms": data.t_eval_ms,
                "n_p_eval": data.n_p_eval, "n_eval": data.n_eval}

    def prompt_run(self, ids: list[int]) -> dict:
        self.reset()
        self._fill(ids, 0)  # outside the timed region: only llama_decode is timed
        t0 = time.perf_counter()
        rc = self.lc.llama_decode(self.ctx, self.batch)
        self.lc.llama_synchronize(self.ctx)
        elapsed = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return {"seconds": elapsed, "tok_per_s": len(ids) / elapsed, "first_token": self.argmax(),
                "perf": self.perf()}

    def decode_run(self, ids: list[int], n_new: int, gaps: list | None = None) -> dict:
        """Greedy decode; pass a list as ``gaps`` (untimed runs only) to collect top-2 gaps."""
        self.reset()
        for i in range(0, len(ids), 512):  # the batch holds 512 tokens
            self.decode(ids[i:i + 512], i)
        out = [self.argmax()]
        t_first = time.perf_counter()
        for i in range(n_new - 1):
            if gaps is not None:
                gaps.append(self.top2_gap())
            self.decode([out[-1]], len(ids) + i)
            out.append(self.argmax())
        if gaps is not None:
            gaps.append(self.top2_gap())
        elapsed = time.perf_counter() - t_first
        perf = self.perf()
        return {"seconds": elapsed, "tok_per_s": (n_new - 1) / elapsed, "tokens": out,
                "perf": perf,
                "internal_tok_per_s": perf["n_eval"] / perf["t_eval_ms"] * 1e3
                if perf["t_eval_ms"] > 0 else None}


def context_ids(tokenize, long_ids: list[int], context: int) -> list[int]:
    """The first `context` ids of the reference text repeated as needed, tokenized whole (so
    a BOS, if the model adds one, comes once)."""
    text = PROMPT_TEXT_FILE.read_text(encoding="utf-8")
    return tokenize(text * (context // len(long_ids) + 2))[:context]


def bench_llama_cpp(path: Path, threads: int, runs: int, n_new: int, context: int) -> dict:
    import llama_cpp
    runner = LlamaCppRunner(path, threads, n_ctx=max(512, context + n_new + 8))
    try:
        long_ids = runner.tokenize(PROMPT_TEXT_FILE.read_text(encoding="utf-8"), runner.add_bos)
        prompt_ids = long_ids[:PROMPT_TOKENS]
        decode_ids = context_ids(lambda t: runner.tokenize(t, runner.add_bos), long_ids, context) \
            if context else runner.tokenize(DECODE_PROMPT, runner.add_bos)
        runner.prompt_run(prompt_ids)  # warm-up
        runner.decode_run(decode_ids, 8)
        prompt = [runner.prompt_run(prompt_ids) for _ in range(runs)]
        decode = [runner.decode_run(decode_ids, n_new) for _ in range(runs)]
        gaps: list[float] = []
        runner.decode_run(decode_ids, n_new, gaps)  # untimed: near-ties of the greedy path
    finally:
        runner.close()
    best_p = max(prompt, key=lambda r: r["tok_per_s"])
    best_d = max(decode, key=lambda r: r["tok_per_s"])
    return {
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "prompt_ids": prompt_ids, "decode_prompt_ids": decode_ids,
        "prompt_tok_per_s": best_p["tok_per_s"],
        "prompt_tok_per_s_internal": best_p["perf"]["n_p_eval"] / best_p["perf"]["t_p_eval_ms"]
        * 1e3 if best_p["perf"]["t_p_eval_ms"] > 0 else None,
        "decode_tok_per_s": best_d["tok_per_s"],
        "decode_tok_per_s_internal": best_d["internal_tok_per_s"],
        "prompt_runs_tok_per_s": [r["tok_per_s"] for r in prompt],
        "decode_runs_tok_per_s": [r["tok_per_s"] for r in decode],
        "generated_ids": best_d["tokens"],
        "top2_gaps": gaps,
    }


# -- smallmind ------------------------------------------------------------------------------
def bench_smallmind(path: Path, threads: int, runs: int, n_new: int, context: int) -> dict:
    import smallmind
    from smallmind import Engine
    engine = Engine.load(path, n_threads=threads, n_ctx=max(512, context + n_new + 8))
    tok = engine.tokenizer
    long_ids = tok.encode(PROMPT_TEXT_FILE.read_text(encoding="utf-8"))
    prompt_ids = long_ids[:PROMPT_TOKENS]
    decode_ids = context_ids(tok.encode, long_ids, context) if context else tok.encode(DECODE_PROMPT)
    banned = {int(t): float("-inf") for t in tok.stop_ids()}

    def prompt_run() -> dict:
        r = engine.generate(prompt_ids, max_new_tokens=1, temperature=0.0, logit_bias=banned)
        return {"tok_per_s": r.timings.prompt_tokens_per_s, "ms": r.timings.prompt_ms,
                "first_token": r.tokens[0]}

    def decode_run(n: int) -> dict:
        r = engine.generate(decode_ids, max_new_tokens=n, temperature=0.0, logit_bias=banned)
        if len(r.tokens) != n:
            raise RuntimeError(f"smallmind produced {len(r.tokens)} of {n} tokens "
                               f"(finish_reason {r.finish_reason})")
        return {"tok_per_s": r.timings.decode_tokens_per_s, "tokens": r.tokens}

    prompt_run()  # warm-up
    decode_run(8)
    prompt = [prompt_run() for _ in range(runs)]
    decode = [decode_run(n_new) for _ in range(runs)]
    best_d = max(decode, key=lambda r: r["tok_per_s"])
    return {
        "version": f"smallmind {smallmind.__version__}",
        "prompt_ids": prompt_ids, "decode_prompt_ids": decode_ids,
        "prompt_tok_per_s": max(r["tok_per_s"] for r in prompt),
        "decode_tok_per_s": best_d["tok_per_s"],
        "prompt_runs_tok_per_s": [r["tok_per_s"] for r in prompt],
        "decode_runs_tok_per_s": [r["tok_per_s"] for r in decode],
        "generated_ids": best_d["tokens"],
    }


def worker(engine: str, path: Path, threads: list[int], runs: int, n_new: int, context: int) -> list[dict]:
    bench = bench_llama_cpp if engine == "llama.cpp" else bench_smallmind
    rows = []
    for t in threads:
        try:
            rows.append({"threads": t, **bench(path, t, runs, n_new, context)})
        except ImportError as exc:
            return [{"threads": t, "skipped": f"not installed: {exc}"} for t in threads]
        except Exception as exc:  # report the failure as a row; the other engine still runs
            rows.append({"threads": t, "skipped": f"{type(exc).__name__}: {exc}"})
    return rows


def run_worker(engine: str, path: Path, threads: list[int], runs: int, n_new: int, context: int) -> list[dict]:
    """The engine's rows, measured in a child process (separate OpenMP runtime, and a crash
    of one engine does not lose the other's figures)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", engine,
           "--_model", str(path), "--threads", ",".join(map(str, threads)), "--_runs", str(runs),
           "--new-tokens", str(n_new), "--context", str(context)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return [{"threads": t, "skipped": f"worker failed (rc {proc.returncode}): {why}"}
                for t in threads]
    return json.loads(lines[-1])["rows"]


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per thread count from the rounds' rows: the best prompt and decode rates over
    all rounds (with their ids and runs), and each round's own rates kept for the ratios."""
    merged = []
    for per_round in zip(*rounds, strict=True):
        ok = [r for r in per_round if not r.get("skipped")]
        if not ok:
            merged.append(per_round[0])
            continue
        row = dict(max(ok, key=lambda r: r["decode_tok_per_s"]))
        best_p = max(ok, key=lambda r: r["prompt_tok_per_s"])
        for key in ("prompt_tok_per_s", "prompt_tok_per_s_internal"):
            if key in best_p:
                row[key] = best_p[key]
        for key in ("prompt_runs_tok_per_s", "decode_runs_tok_per_s"):
            row[key] = [x for r in ok for x in r[key]]
        row["rounds"] = [None if r.get("skipped") else
                         {"prompt_tok_per_s": r["prompt_tok_per_s"], "decode_tok_per_s": r["decode_tok_per_s"]}
                         for r in per_round]
        merged.append(row)
    return merged


def round_ratios(sm: dict | None, lc: dict | None, key: str) -> list[float]:
    """smallmind's rate over llama.cpp's, per round where both engines measured it."""
    if not sm or not lc or "rounds" not in sm or "rounds" not in lc:
        return []
    return [a[key] / b[key] for a, b in zip(sm["rounds"], lc["rounds"], strict=True) if a and b and b[key] > 0]


def _ratio(sm: dict | None, lc: dict | None, key: str) -> float | None:
    """The median of the rounds' ratios (with one round: the ratio of the two rates)."""
    ratios = round_ratios(sm, lc, key)
    return statistics.median(ratios) if ratios else None


def _range(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""


# -- report ---------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


COLUMNS = ["model", "threads", "llama.cpp prompt tok/s", "smallmind prompt tok/s",
           "prompt ratio", "llama.cpp decode tok/s", "smallmind decode tok/s", "decode ratio",
           "decode ratio, rounds", "weight MB/token", "smallmind weight GB/s", "% of read", "same greedy ids"]


def table_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        lc, sm = r["engines"].get("llama.cpp") or {}, r["engines"].get("smallmind") or {}
        rows.append({
            "model": r["model"], "threads": r["threads"],
            "llama.cpp prompt tok/s": lc.get("prompt_tok_per_s"),
            "smallmind prompt tok/s": sm.get("prompt_tok_per_s"),
            "prompt ratio": r["prompt_ratio"],
            "llama.cpp decode tok/s": lc.get("decode_tok_per_s"),
            "smallmind decode tok/s": sm.get("decode_tok_per_s"),
            "decode ratio": r["decode_ratio"],
            "decode ratio, rounds": _range(r["decode_round_ratios"]),
            "weight MB/token": r.get("weight_MB_per_token"),
            "smallmind weight GB/s": r.get("weight_GB_per_s"),
            "% of read": r.get("weight_pct_of_read"),
            "same greedy ids": r["greedy_agreement"],
        })
    return rows


def notes(results: list[dict]) -> str:
    lines = ["ratio = smallmind / llama.cpp (higher: smallmind faster)"]
    for r in results:
        for name, row in r["engines"].items():
            if row.get("skipped"):
                lines.append(f"- {name}, {r['model']}, {r['threads']} thread(s): skipped "
                             f"({row['skipped']})")
            elif row.get("decode_tok_per_s_internal"):
                lines.append(f"- llama.cpp, {r['model']}, {r['threads']} thread(s): its own perf "
                             f"counters (time inside llama_decode) give prompt "
                             f"{_fmt(row['prompt_tok_per_s_internal'])} tok/s, decode "
                             f"{_fmt(row['decode_tok_per_s_internal'])} tok/s")
    ref = RUN_C_REPORTED
    lines.append(f"- {ref['engine']} on {ref['model']}: ~{ref['decode_tok_per_s']:,.0f} tok/s "
                 f"decode ({ref['note']}).")
    return "\n".join(lines)


def write_outputs(rows: list[dict], meta: dict, json_path: Path) -> None:
    """Table + JSON through benchmarks/_report.py (shared format), or a local fallback."""
    try:
        from _report import machine_info as report_machine_info
        from _report import write_report
    except ImportError:
        print("| " + " | ".join(COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|")
        for row in rows:
            print("| " + " | ".join(_fmt(v, 2) if isinstance(v, float) else str(v)
                                    for v in (row.get(c) for c in COLUMNS)) + " |")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**machine_info(), **meta}
        json_path.write_text(json.dumps({"name": "compare", "meta": meta, "columns": COLUMNS,
                                         "rows": rows}, indent=2, default=str) + "\n")
        print(f"\nwrote {json_path}")
        return
    meta = {**report_machine_info(), **meta}
    write_report("compare", rows, COLUMNS, meta, json_path=json_path)


def _agreement(lc: dict | None, sm: dict | None) -> str:
    if not lc or not sm or "generated_ids" not in lc or "generated_ids" not in sm:
        return "-"
    if lc["decode_prompt_ids"] != sm["decode_prompt_ids"]:
        return "prompts tokenised differently"
    a, b = lc["generated_ids"], sm["generated_ids"]
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if same == len(a) == len(b):
        return "all"
    gaps = lc.get("top2_gaps") or []
    why = f" (llama.cpp top-2 gap there {gaps[same]:.3g})" if same < len(gaps) else ""
    return f"first {same} of {len(a)}{why}"


def png(results: list[dict], path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    # Short names ("SmolLM2-135M") so neighbouring labels do not run into each other.
    labels = [f"{'-'.join(r['model'].split()[0].split('-')[:2])}\n{r['threads']} thr" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    x = np.arange(len(results))
    panels = ((axes[0], "prompt_tok_per_s", f"prompt processing ({PROMPT_TOKENS} tokens)"),
              (axes[1], "decode_tok_per_s", "greedy decode"))
    for ax, key, title in panels:
        for j, engine in enumerate(ENGINES):
            vals = [(r["engines"].get(engine) or {}).get(key) or 0.0 for r in results]
            ax.bar(x + (j - 0.5) * width, vals, width, label=engine)
        ax.set_xticks(x, labels)
        ax.set_yscale("log")
        ax.set_ylabel("tokens / s (log scale)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def _cpu_has_amx() -> bool:
    """Whether /proc/cpuinfo lists AMX tiles (where llama.cpp's AMX buffers faulted before)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="best of 3 runs instead of 5")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the engines this many times (ratios: median of the rounds')")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--context", type=int, default=0,
                    help="decode after this many prompt tokens (default: a short prompt)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--models", default=None, help="comma list of model names (default: all)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "compare.json")
    ap.add_argument("--png", type=Path, default=HERE / "results" / "compare.png")
    ap.add_argument("--llama-extra-bufts", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp's extra buffer types (repacked/AMX weights): on as in llama.cpp's "
                         "default, except on AMX CPUs with auto (the default)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_runs", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.context < 0:
        ap.error("--context must be >= 0")
    if args._worker:
        rows = worker(args._worker, args._model, threads, args._runs, args.new_tokens, args.context)
        print(json.dumps({"rows": rows}))
        return 0

    runs = 3 if args.quick else 5
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    extra_bufts = args.llama_extra_bufts
    if extra_bufts == "auto":
        extra_bufts = "off" if _cpu_has_amx() else "on"
    os.environ["SMALLMIND_BENCH_EXTRA_BUFTS"] = "1" if extra_bufts == "on" else "0"  # for the workers
    print(f"llama.cpp extra buffer types (repacked weights): {extra_bufts}", file=sys.stderr)
    paths = model_paths()
    wanted = args.models.split(",") if args.models else list(paths)
    load_before = os.getloadavg()
    bandwidth = read_bandwidths(threads, args.quick)
    print("read bandwidth: " + ", ".join(f"{t} thread(s) {gbs:.1f} GB/s" for t, gbs in bandwidth.items()),
          file=sys.stderr)
    results = []
    for name in wanted:
        path = paths[name]
        missing = ensure_stories_gguf(path) if name == "stories260K" else \
            (None if path.exists() else f"{path} is missing (python tools/fetch_models.py)")
        rounds: dict[str, list[list[dict]]] = {e: [] for e in engines}
        for rnd in range(args.rounds):
            for engine in engines if rnd % 2 == 0 else engines[::-1]:
                if missing:
                    rounds[engine].append([{"threads": t, "skipped": missing} for t in threads])
                    continue
                print(f"measuring {engine} on {name} (round {rnd + 1} of {args.rounds}) ...",
                      file=sys.stderr, flush=True)
                rounds[engine].append(run_worker(engine, path, threads, runs, args.new_tokens, args.context))
        per_engine = {e: merge_rounds(rounds[e]) for e in engines}
        for i, t in enumerate(threads):
            rows = {e: per_engine[e][i] for e in engines}
            lc, sm = rows.get("llama.cpp"), rows.get("smallmind")
            per_token = None if missing else weight_bytes_per_token(path)
            sm_rate = (sm or {}).get("decode_tok_per_s")
            weight_gbs = per_token * sm_rate / 1e9 if per_token and sm_rate else None
            results.append({
                "weight_MB_per_token": per_token / 1e6 if per_token else None,
                "weight_GB_per_s": weight_gbs, "read_GB_per_s": bandwidth[t],
                "weight_pct_of_read": 100 * weight_gbs / bandwidth[t] if weight_gbs else None,
                "model": name, "file": str(path), "threads": t, "engines": rows,
                "prompt_ratio": _ratio(sm, lc, "prompt_tok_per_s"),
                "decode_ratio": _ratio(sm, lc, "decode_tok_per_s"),
                "prompt_round_ratios": round_ratios(sm, lc, "prompt_tok_per_s"),
                "decode_round_ratios": round_ratios(sm, lc, "decode_tok_per_s"),
                "greedy_agreement": _agreement(lc, sm),
                "prompt_ids_equal": (lc["prompt_ids"] == sm["prompt_ids"])
                if lc and sm and "prompt_ids" in lc and "prompt_ids" in sm else None,
            })
    for r in results:  # keep the JSON readable: ids are summarised, not listed
        for row in r["engines"].values():
            for key in ("prompt_ids", "decode_prompt_ids", "generated_ids", "top2_gaps"):
                if key in row:
                    row[key + "_count"] = len(row.pop(key))
    meta = {
        "benchmark": "benchmarks/compare.py", "quick": args.quick, "best_of": runs, "rounds": args.rounds,
        "prompt_tokens": PROMPT_TOKENS, "new_tokens": args.new_tokens, "decode_context": args.context,
        "decode_prompt": DECODE_PROMPT, "llama_extra_bufts": extra_bufts,
        "timing": "wall clock (perf_counter) in a Python loop, best of runs; see docstring",
        "loadavg_before": load_before, "read_GB_per_s": bandwidth,
        "loadavg_after": os.getloadavg(), "reference": RUN_C_REPORTED, "details": results,
    }
    write_outputs(table_rows(results), meta, args.json)
    print(notes(results))
    print(f"- llama.cpp ran with its extra buffer types (repacked weights) {extra_bufts}")
    chart = png(results, args.png)
    print(f"PNG: {chart}" if chart else "PNG: skipped (matplotlib not importable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
