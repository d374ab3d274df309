"""Two builds of smallmind against each other, interleaved, on the real models.

    python benchmarks/ab_trees.py --base DIR [--new DIR] [--rounds 3] [--models NAMES]
                                  [--threads 1,2] [--context N] [--json PATH]

DIR is a source tree with its extensions built in place (``python setup.py build_ext
--inplace``), e.g. a ``git worktree`` of an older commit; --new defaults to this checkout.
Each round runs, for every model and thread count, one fresh process per tree, alternating,
that loads the model and reports its best of 3 generations: decode tok/s (compare.py's short
prompt, 128 greedy tokens, end-of-text banned) and prompt tok/s (compare.py's 256-token
prompt). A machine's speed drifts over minutes, so alternating the trees and keeping each
tree's best round compares them under the same conditions; the ratio is new / base (above 1:
the new tree is faster). --context N decodes 64 tokens after an N-token prompt instead (the
reference text repeated, as compare.py --context), where attention reads a long KV cache.
Writes JSON (default benchmarks/results/ab_trees.json).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _report import machine_info, write_report
from compare import DECODE_PROMPT, PROMPT_TEXT_FILE, PROMPT_TOKENS, present_models

DEFAULT_MODELS = "SmolLM2-135M-Instruct Q4_1,Gemma 3 270M Q4_K_M"

# Run in the tree under test (its own `smallmind`), prints "decode_tok_s prompt_tok_s".
CHILD = r"""
import sys
from smallmind import Engine
path, threads, prompt_file, prompt_tokens, decode_prompt, context, benchmarks = sys.argv[1:8]
engine = Engine.load(path, n_threads=int(threads))
eos = engine.tokenizer.eos_id
bias = {eos: float("-inf")} if eos is not None else None
ids = engine.tokenizer.encode(open(prompt_file, encoding="utf-8").read())
if int(context):  # compare.py --context's prompt (this script's compare.py, whichever tree runs)
    sys.path.insert(0, benchmarks)
    from compare import context_ids
    decode_prompt = context_ids(engine.tokenizer.encode, ids, int(context))
ids = ids[:int(prompt_tokens)]
new = 64 if int(context) else 128
decode = max(engine.generate(decode_prompt, max_new_tokens=new, temperature=0, logit_bias=bias)
             .timings.decode_tokens_per_s for _ in range(3))
prompt = max(engine.generate(ids, max_new_tokens=1, temperature=0).timings.prompt_tokens_per_s
             for _ in range(3))
print(decode, prompt)
"""


def run_child(tree: Path, model: Path, threads: int, context: int) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(threads), str(PROMPT_TEXT_FILE),
                          str(PROMPT_TOKENS), DECODE_PROMPT, str(context), str(Path(__file__).resolve().parent)],
                         cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    decode, prompt = out.stdout.split()
    return float(decode), float(prompt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="source tree with extensions built in place")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list of compare.py model names")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--context", type=int, default=0, help="decode after this many prompt tokens")
    ap.add_argument("--json", default=None, help="output JSON path")
    args = ap.parse_args()
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict] = []
    models = present_models(args.models, rows)
    runs: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for rnd in range(args.rounds):
        for name, path in models:
            for t in threads:
                for label, tree in trees.items():
                    decode, prompt = run_child(tree, path, t, args.context)
                    runs.setdefault((name, t, label), []).append((decode, prompt))
                    print(f"round {rnd + 1}: {name}, {t} thread(s), {label}: decode / prompt tok/s "
                          f"{decode:.1f} / {prompt:.0f}", flush=True)
    for name, _ in models:
        for t in threads:
            # each tree's best decode and best prompt rate over the rounds
            best = {label: tuple(map(max, zip(*runs[(name, t, label)], strict=True))) for label in trees}
            rows.append({"model": name, "threads": t,
                         "decode base": best["base"][0], "decode new": best["new"][0],
                         "decode ratio": best["new"][0] / best["base"][0],
                         "prompt base": best["base"][1], "prompt new": best["new"][1],
                         "prompt ratio": best["new"][1] / best["base"][1]})
    columns = ["model", "threads", "decode base", "decode new", "decode ratio", "prompt base", "prompt new",
               "prompt ratio"]
    write_report("ab_trees", rows, columns,
                 machine_info() | {"rounds": args.rounds, "context": args.context, "trees": {k: str(v) for k, v in trees.items()}}, args.json)


if __name__ == "__main__":
    main()
