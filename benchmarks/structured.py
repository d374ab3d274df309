"""Structured output: what a JSON-schema constraint costs per token, beside llama.cpp's grammar.

    python benchmarks/structured.py [--quick] [--threads 2] [--new-tokens 320]
                                    [--models smollm2,gemma3] [--json PATH]

Models: SmolLM2-135M-Instruct Q4_1 (49,152-token vocabulary) and Gemma 3 270M Q4_K_M
(262,144 tokens), from ~/.cache/smallmind. Schemas: benchmarks/structured_schemas.py (small,
medium, large). Every run is greedy, after the same chat prompt asking for the JSON.

smallmind (one child process per model):
* plain decode tok/s: --new-tokens tokens with end-of-text banned;
* constrained decode tok/s: ``generate(json_schema=...)`` until the JSON is complete, with
  the mask computed in a worker thread during the forward pass ("thread", the default) and
  on the token loop ("inline");
* loop ms/token: time the token loop spends in the constraint (waiting for the mask,
  applying it, feeding the token to the matcher); in inline mode, that is the whole cost;
* mask ms/token: time llguidance takes to compute one mask (wherever it runs);
* every output is checked with jsonschema when it is installed.

llama.cpp (llama-cpp-python, its own child process, same prompt token ids): greedy decode
through the C API with a sampler chain (greedy) or (grammar from
``LlamaGrammar.from_json_schema`` + greedy); grammar ms/token is the mean time of
``llama_sampler_sample`` with the grammar minus without it, i.e. the grammar's cost per token.

Also: the time to apply one mask to one logits row, smallmind's kernel beside llguidance's
NumPy helper. The overhead ratio is llama.cpp's grammar ms/token over smallmind's inline loop ms/token
(mask + kernel + matcher update, nothing hidden behind the forward pass). Prints a markdown
table and writes JSON (default benchmarks/results/structured.json).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from _report import machine_info, markdown_table, write_report
from structured_schemas import SCHEMAS

MODELS = {"smollm2": ("SmolLM2-135M-Instruct Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf"),
          "gemma3": ("Gemma 3 270M Q4_K_M", "gemma-3-270m-q4_k_m.gguf")}


def prompt_messages(schema: dict) -> list[dict]:
    return [{"role": "user", "content": "Reply with an example JSON object matching this schema: "
             + json.dumps(schema)}]


# -- smallmind ------------------------------------------------------------------------------
def bench_smallmind(path: Path, threads: int, runs: int, n_new: int) -> dict:
    import smallmind.structured.constraint as sc
    from smallmind import Engine
    from smallmind.chat import encode_chat
    try:
        import jsonschema
    except ImportError:
        jsonschema = None

    engine = Engine.load(path, n_threads=threads, n_ctx=1024)
    tok = engine.tokenizer
    t0 = time.perf_counter()
    sc.compile_grammar(tok, engine.config.vocab_size, regex="x")
    vocab_s = time.perf_counter() - t0
    banned = {int(t): float("-inf") for t in tok.stop_ids()}
    captured: list = []
    start = sc.Grammar.start

    def capture(self, **kw):
        captured.append(start(self, **kw))
        return captured[-1]

    sc.Grammar.start = capture  # type: ignore[method-assign]  # read each run's Constraint

    def one_run(ids: list[int], schema: dict, mode: str) -> dict:
        if mode == "plain":
            r = engine.generate(ids, max_new_tokens=n_new, temperature=0.0, logit_bias=banned)
            return {"tok_per_s": r.timings.decode_tokens_per_s, "tokens": len(r.tokens)}
        sc.MASK_IN_THREAD = mode == "thread"
        captured.clear()
        r = engine.generate(ids, json_schema=schema, max_new_tokens=n_new, temperature=0.0)
        c = captured[-1]
        return {"tok_per_s": r.timings.decode_tokens_per_s, "tokens": len(r.tokens),
                "finish": r.finish_reason, "text": r.text, "valid": valid(r.json, schema),
                "loop_ms_per_token": c.wait_ns / max(c.steps, 1) / 1e6,
                "mask_ms_per_token": c.mask_ns / max(c.steps, 1) / 1e6}

    def valid(value: object, schema: dict) -> bool | None:
        if jsonschema is None:
            return None
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return False
        return value is not None

    out: dict = {"vocab_build_s": vocab_s, "schemas": {}, "prompts": {}}
    for name, schema in SCHEMAS.items():
        ids = encode_chat(prompt_messages(schema), engine.tokenizer, engine.chat_template)
        out["prompts"][name] = ids
        t0 = time.perf_counter()
        sc.compile_grammar(tok, engine.config.vocab_size, json_schema=schema)
        compile_ms = (time.perf_counter() - t0) * 1e3
        one_run(ids, schema, "inline")  # warm-up: the matcher builds its lexer states once
        samples: dict[str, list[dict]] = {"plain": [], "thread": [], "inline": []}
        for _ in range(runs):  # interleaved, so that a change in machine load hits all three
            for mode, runs_of_mode in samples.items():
                runs_of_mode.append(one_run(ids, schema, mode))
        best = {mode: max(rs, key=lambda r: r["tok_per_s"]) for mode, rs in samples.items()}
        out["schemas"][name] = {"compile_ms": compile_ms, "plain_tok_per_s": best["plain"]["tok_per_s"],
                                "thread": best["thread"], "inline": best["inline"]}
    sc.MASK_IN_THREAD = True
    out["kernel"] = kernel_times(engine.config.vocab_size)
    return out


def kernel_times(vocab: int) -> dict:
    """Microseconds to apply a mask to one logits row: smallmind's kernel beside llguidance's
    NumPy helper, for a mask that allows 10 tokens (JSON punctuation) and one that bans 10
    (free string content)."""
    import numpy as np
    from _report import best_time
    from llguidance.numpy import apply_token_bitmask_inplace

    from smallmind._core._mask import apply_token_mask

    row = np.random.default_rng(0).standard_normal(vocab).astype(np.float32)
    few = np.random.default_rng(1).choice(vocab, 10, replace=False)
    out = {}
    for name, allow in (("allow 10", True), ("ban 10", False)):
        words = np.zeros((vocab + 31) // 32, np.uint32) if allow else np.full((vocab + 31) // 32, 2**32 - 1, np.uint32)
        for t in few:
            words[t >> 5] ^= np.uint32(1 << (t & 31))
        as_int32 = words.view(np.int32)[None, :]

        # Masking is idempotent, so the same row can be masked again and again.
        out[name] = {"smallmind_us": best_time(lambda w=words: apply_token_mask(row, w)) * 1e6,
                     "llguidance_numpy_us": best_time(
                         lambda m=as_int32: apply_token_bitmask_inplace(row[None, :], m)) * 1e6}
    return out


# -- llama.cpp ------------------------------------------------------------------------------
def bench_llama_cpp(path: Path, threads: int, runs: int, n_new: int, prompts: dict) -> dict:
    import llama_cpp as lc
    from compare import LlamaCppRunner
    from llama_cpp.llama_grammar import LlamaGrammar

    # the plain run makes all n_new tokens (end-of-text banned) after prompts of up to ~600
    runner = LlamaCppRunner(path, threads, n_ctx=2048)

    def chain(grammar: str | None):
        smpl = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if grammar is not None:
            lc.llama_sampler_chain_add(smpl, lc.llama_sampler_init_grammar(runner.vocab, grammar.encode(), b"root"))
        lc.llama_sampler_chain_add(smpl, lc.llama_sampler_init_greedy())
        return smpl

    def decode(ids: list[int], smpl, stop_at_eog: bool) -> dict:
        runner.reset()
        lc.llama_sampler_reset(smpl)
        for pos in range(0, len(ids), 512):  # the runner's batch holds 512 tokens
            runner.decode(ids[pos:pos + 512], pos)
        sample_ns, out = 0, []
        t_first = None
        for i in range(n_new):
            t0 = time.perf_counter_ns()
            token = lc.llama_sampler_sample(smpl, runner.ctx, -1)
            sample_ns += time.perf_counter_ns() - t0
            if t_first is None:
                t_first = time.perf_counter()
            if stop_at_eog and lc.llama_vocab_is_eog(runner.vocab, token):
                break
            out.append(token)
            if i + 1 < n_new:
                runner.decode([token], len(ids) + i)
        elapsed = time.perf_counter() - (t_first or time.perf_counter())
        return {"tok_per_s": (len(out) - 1) / elapsed if len(out) > 1 and elapsed > 0 else None,
                "sample_ms_per_token": sample_ns / max(len(out), 1) / 1e6, "tokens": out}

    buf = ctypes.create_string_buffer(256)

    def piece(token: int) -> bytes:
        n = lc.llama_token_to_piece(runner.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    out: dict = {"version": f"llama-cpp-python {lc.__version__}", "schemas": {}}
    try:
        plain_chain = chain(None)
        # End-of-text banned so that the plain run makes exactly n_new tokens.
        bias = (lc.llama_logit_bias * len(runner.banned))(*[lc.llama_logit_bias(int(t), float("-inf"))
                                                           for t in runner.banned])
        lc.llama_sampler_chain_add(plain_chain, lc.llama_sampler_init_logit_bias(runner.n_vocab, len(runner.banned), bias))
        for name, schema in SCHEMAS.items():
            ids = prompts[name]
            t0 = time.perf_counter()
            gbnf = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar
            grammar_chain = chain(gbnf)
            build_ms = (time.perf_counter() - t0) * 1e3
            decode(ids, plain_chain, False)  # warm-up
            plain = max((decode(ids, plain_chain, False) for _ in range(runs)), key=lambda r: r["tok_per_s"] or 0)
            gram = max((decode(ids, grammar_chain, True) for _ in range(runs)), key=lambda r: r["tok_per_s"] or 0)
            text = b"".join(piece(t) for t in gram["tokens"])
            out["schemas"][name] = {
                "grammar_build_ms": build_ms, "plain_tok_per_s": plain["tok_per_s"],
                "grammar_tok_per_s": gram["tok_per_s"], "grammar_tokens": len(gram["tokens"]),
                "plain_sample_ms_per_token": plain["sample_ms_per_token"],
                "grammar_sample_ms_per_token": gram["sample_ms_per_token"],
                "grammar_ms_per_token": gram["sample_ms_per_token"] - plain["sample_ms_per_token"],
                "grammar_text": text.decode("utf-8", "replace")}
            lc.llama_sampler_free(grammar_chain)
        lc.llama_sampler_free(plain_chain)
    finally:
        runner.close()
    return out


# -- driver -------------------------------------------------------------------------------------
def run_child(engine: str, path: Path, args: argparse.Namespace, prompts_file: str | None) -> dict:
    """One engine on one model in a child process (separate native runtimes; a crash of one
    engine does not lose the other's figures)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", engine, "--_model", str(path),
           "--threads", str(args.threads), "--new-tokens", str(args.new_tokens), "--_runs", str(args.runs)]
    if prompts_file:
        cmd += ["--_prompts", prompts_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"skipped": f"{engine} failed (rc {proc.returncode}): {why}"}
    return json.loads(lines[-1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(model: str, sm: dict, lc: dict) -> list[dict]:
    rows = []
    for name in SCHEMAS:
        s, ll = sm.get("schemas", {}).get(name), lc.get("schemas", {}).get(name, {})
        if s is None:
            rows.append({"model": model, "schema": name, "note": sm.get("skipped")})
            continue
        th, inl = s["thread"], s["inline"]
        rows.append({
            "model": model, "schema": name, "tokens": th["tokens"], "valid": th["valid"] and inl["valid"],
            "plain tok/s": s["plain_tok_per_s"], "json tok/s (thread)": th["tok_per_s"],
            "json tok/s (inline)": inl["tok_per_s"],
            "json/plain (thread)": _ratio(th["tok_per_s"], s["plain_tok_per_s"]),
            "json/plain (inline)": _ratio(inl["tok_per_s"], s["plain_tok_per_s"]),
            "mask ms/tok": inl["mask_ms_per_token"], "loop ms/tok (inline)": inl["loop_ms_per_token"],
            "loop ms/tok (thread)": th["loop_ms_per_token"],
            "llama.cpp plain tok/s": ll.get("plain_tok_per_s"), "llama.cpp grammar tok/s": ll.get("grammar_tok_per_s"),
            "llama.cpp grammar/plain": _ratio(ll.get("grammar_tok_per_s"), ll.get("plain_tok_per_s")),
            "llama.cpp grammar ms/tok": ll.get("grammar_ms_per_token"),
            "overhead ratio": _ratio(ll.get("grammar_ms_per_token"), inl["loop_ms_per_token"]),
            "note": lc.get("skipped")})
    return rows


COLUMNS = ["model", "schema", "tokens", "valid", "plain tok/s", "json tok/s (thread)", "json tok/s (inline)",
           "json/plain (thread)", "json/plain (inline)", "mask ms/tok", "loop ms/tok (inline)", "loop ms/tok (thread)", "llama.cpp plain tok/s",
           "llama.cpp grammar tok/s", "llama.cpp grammar/plain", "llama.cpp grammar ms/tok", "overhead ratio",
           "note"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one run per figure instead of three")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=320)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_model", help=argparse.SUPPRESS)
    ap.add_argument("--_runs", type=int, default=3, dest="runs", help=argparse.SUPPRESS)
    ap.add_argument("--_prompts", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    if args.__dict__["_worker"]:
        path = Path(args.__dict__["_model"])
        if args.__dict__["_worker"] == "smallmind":
            result = bench_smallmind(path, args.threads, args.runs, args.new_tokens)
        else:
            prompts = json.loads(Path(args.__dict__["_prompts"]).read_text())
            try:
                result = bench_llama_cpp(path, args.threads, args.runs, args.new_tokens, prompts)
            except ImportError as exc:
                result = {"skipped": f"not installed: {exc}"}
        print(json.dumps(result))
        return
    rows, raw = [], {}
    for key in args.models.split(","):
        label, filename = MODELS[key]
        path = CACHE / filename
        if not path.exists():
            rows.append({"model": label, "note": f"{path} is missing (python tools/fetch_models.py)"})
            continue
        sm = run_child("smallmind", path, args, None)
        lc: dict = {"skipped": "no prompts (smallmind failed)"}
        if "prompts" in sm:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
                json.dump(sm["prompts"], fh)
            try:
                lc = run_child("llama.cpp", path, args, fh.name)
            finally:
                os.unlink(fh.name)
        raw[label] = {"smallmind": sm, "llama.cpp": lc}
        rows.extend(table(label, sm, lc))
    kernel_rows = [{"model": label, "mask": kind, "smallmind µs": t["smallmind_us"],
                    "llguidance.numpy µs": t["llguidance_numpy_us"],
                    "ratio": t["llguidance_numpy_us"] / t["smallmind_us"]}
                   for label, r in raw.items() for kind, t in r["smallmind"].get("kernel", {}).items()]
    print("Applying one mask to one logits row:\n")
    print(markdown_table(kernel_rows, ["model", "mask", "smallmind µs", "llguidance.numpy µs", "ratio"]) + "\n")
    meta = {**machine_info(), "threads": args.threads, "new_tokens": args.new_tokens, "runs": args.runs,
            "kernel": kernel_rows, "raw": raw}
    write_report("structured", rows, COLUMNS, meta, json_path=args.json)


if __name__ == "__main__":
    main()
