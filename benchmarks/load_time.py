"""Load latency: ``Engine.load`` of a GGUF file against llama.cpp's load of the same file.

    python benchmarks/load_time.py [--runs 7] [--models NAMES] [--baseline PATH]

Each sample runs in a fresh subprocess (nothing cached in-process), with the file read
through the page cache just before (a warm cache: what a second start of a program sees).
Imports are not timed, only ``Engine.load(path)`` (default threads) or ``llama_cpp.Llama(path, n_threads=1,
verbose=False)``. Samples alternate between the engines, run after run, so that a noisy
machine disturbs all of them alike; the table shows the best of ``--runs`` and its ratio to
llama.cpp's best. ``--baseline`` adds another checkout of smallmind (e.g. main, built in
place) as a second engine, for before/after figures from the same run. Each smallmind
sample also reports VmRSS after the load and an 8-token greedy generate.

Writes benchmarks/results/load_time.json and prints a table.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from _report import machine_info, write_report
from compare import REPO, present_models

DEFAULT_MODELS = "Gemma 3 270M Q4_K_M,SmolLM2-135M-Instruct Q4_1"

_SMALLMIND = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from smallmind import Engine
import smallmind._core._matmul, smallmind.models._layer  # noqa: F401  (imports are not timed)
start = time.perf_counter()
engine = Engine.load(sys.argv[1])
seconds = time.perf_counter() - start
engine.generate("The capital of France is", max_new_tokens=8, temperature=0)
rss = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")][0]
print(json.dumps({"seconds": seconds, "rss_mb": rss / 1024}))
"""

_LLAMA_CPP = r"""
import json, sys, time
import llama_cpp
start = time.perf_counter()
llm = llama_cpp.Llama(sys.argv[1], n_threads=1, verbose=False)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def warm(path: Path) -> None:
    """Read the whole file, so that the load finds it in the page cache."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 22):
            pass


def sample(script: str, path: Path, checkout: Path | None) -> dict:
    warm(path)
    args = [sys.executable, "-c", script, str(path)] + ([str(checkout)] if checkout else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=checkout or REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="samples per engine and model (best kept)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma list of compare.py model names")
    parser.add_argument("--baseline", type=Path, help="another smallmind checkout, built in place")
    parser.add_argument("--json", type=Path, help="output path (default benchmarks/results/load_time.json)")
    args = parser.parse_args()

    engines: list[tuple[str, str, Path | None]] = [("smallmind", _SMALLMIND, REPO)]
    if args.baseline is not None:
        engines.append((f"baseline ({args.baseline})", _SMALLMIND, args.baseline.resolve()))
    if importlib.util.find_spec("llama_cpp") is not None:
        engines.append(("llama.cpp", _LLAMA_CPP, None))
    else:
        print("llama-cpp-python is not installed: no peer to compare with", file=sys.stderr)

    rows: list[dict] = []
    for _, path in present_models(args.models, rows):
        samples: dict[str, list[dict]] = {name: [] for name, _, _ in engines}
        for _ in range(args.runs):
            for name, script, checkout in engines:
                samples[name].append(sample(script, path, checkout))
        peer = min(s["seconds"] for s in samples["llama.cpp"]) if "llama.cpp" in samples else None
        for name, _, _ in engines:
            times = sorted(s["seconds"] for s in samples[name])
            rss = [s["rss_mb"] for s in samples[name] if "rss_mb" in s]
            rows.append({"model": path.name, "engine": name, "best_s": times[0],
                         "median_s": times[len(times) // 2], "vs_llama_cpp": times[0] / peer if peer else None,
                         "rss_after_generate_mb": max(rss) if rss else None,
                         "samples_s": [s["seconds"] for s in samples[name]]})
    meta = machine_info()
    meta.update(runs=args.runs, warm_page_cache=True)
    write_report("load_time", rows, ["model", "engine", "best_s", "median_s", "vs_llama_cpp",
                                     "rss_after_generate_mb"], meta=meta, json_path=args.json)


if __name__ == "__main__":
    main()
