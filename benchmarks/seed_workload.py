"""Seed workload: tok/s, ms/token and bytes/token, with and without the KV cache.

    python benchmarks/seed_workload.py [--quick] [--json PATH] [--model FILE]

--model runs the same workload on a model file (e.g. smallmind/data/default.gguf).

Single-threaded (BLAS pinned to one thread too). Prints a markdown table and writes JSON
(default benchmarks/results/seed_workload.json).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from _report import write_json  # noqa: E402

from smallmind._bench import format_table, run_seed_workload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=None, help="a model file instead of the seed model")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "seed_workload.json"))
    args = ap.parse_args()
    result = run_seed_workload(quick=args.quick, model=args.model)
    print(format_table(result))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
