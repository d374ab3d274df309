"""Per-token cost of ``model.forward`` on the seed model, this tree against another one.

    python benchmarks/forward_overhead.py [--against DIR] [--rounds N] [--instructions]

The seed model (470k parameters, 2 layers) is small enough that the Python around the
kernels is a visible share of a decode step, so this is where a change to the forward
pass's plumbing shows. Each tree runs in its own process (``PYTHONPATH=<tree>``; build it
in place first), alternately, ``--rounds`` times; the table gives the best CPU time per
single-token forward and the ratio. On a loaded machine CPU time is still noisy:
``--instructions`` also counts instructions per forward under valgrind's callgrind
(load-independent; about a minute per tree), from the difference of a 21x and a 1x run.
Writes JSON to benchmarks/results/forward_overhead.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _report import write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Runs inside each tree: argv = [mode, n]; mode "time" prints best CPU µs per forward,
# mode "count" just runs n x 60 forwards (for callgrind).
CHILD = """
import sys, time
from smallmind import Engine, ModelConfig
model = Engine.from_config(ModelConfig.seed_small()).model
state = model.new_state(n_threads=1)
def run(n):
    for _ in range(n):
        state.cache.truncate(0)
        for t in range(60):
            model.forward(state, [t])
    return 60 * n
mode, n = sys.argv[1], int(sys.argv[2])
run(1)
if mode == "time":
    best = min((lambda c0: (run(n), time.process_time() - c0))(time.process_time())[1] / (60 * n)
               for _ in range(5))
    print(best * 1e6)
else:
    run(n)
"""


def _child(tree: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    return subprocess.run([*prefix, sys.executable, "-c", CHILD, *args], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)


def _instructions(tree: Path) -> float:
    def total(n: int) -> int:
        out = _child(tree, "count", str(n), prefix=("valgrind", "--tool=callgrind",
                                                    "--callgrind-out-file=/dev/null"))
        line = next(ln for ln in out.stderr.splitlines() if "Collected" in ln)
        return int(line.split()[-1])
    return (total(21) - total(1)) / (20 * 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", type=Path, default=None, help="another built tree to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    ap.add_argument("--json", default=str(HERE / "results" / "forward_overhead.json"))
    args = ap.parse_args()
    trees = {"this": REPO}
    if args.against is not None:
        trees["other"] = args.against.resolve()
    us: dict[str, list[float]] = {k: [] for k in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            us[name].append(float(_child(tree, "time", "20").stdout))
    result: dict[str, dict] = {name: {"tree": str(tree), "cpu_us_per_forward_best": min(us[name]),
                                      "cpu_us_per_forward_all": us[name]} for name, tree in trees.items()}
    if args.instructions:
        if shutil.which("valgrind") is None:
            sys.exit("--instructions needs valgrind")
        for name, tree in trees.items():
            result[name]["instructions_per_forward"] = _instructions(tree)
    print("| tree | CPU µs / forward (best) | instructions / forward |\n|---|---:|---:|")
    for name, r in result.items():
        ins = r.get("instructions_per_forward")
        print(f"| {name}: {r['tree']} | {r['cpu_us_per_forward_best']:.2f} | "
              f"{'-' if ins is None else f'{ins:,.0f}'} |")
    if "other" in result:
        a, b = result["this"], result["other"]
        print(f"\nthis / other: CPU time {a['cpu_us_per_forward_best'] / b['cpu_us_per_forward_best']:.3f}"
              + (f", instructions {a['instructions_per_forward'] / b['instructions_per_forward']:.4f}"
                 if args.instructions else ""))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
