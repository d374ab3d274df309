"""CI benchmark job: quick benchmarks, each as a ratio to a peer measured in the same run,
checked against the committed baseline (benchmarks/baseline.json).

    python benchmarks/regression.py                 # run, compare, print a markdown summary
    python benchmarks/regression.py --update        # refresh this ISA path's baseline

Ratios, not absolute speeds: a slower or busier CPU slows smallmind and its peer alike, so
``smallmind / peer`` moves far less between machines than either figure. The peers:

* kernels: NumPy (one thread) on the same data, every row of ``benchmarks/kernels.py --quick``;
* seed workload: the float64 NumPy reference model (``reference.gpt2_logits``, the oracle of the
  tests) generating the same tokens of the seed workload, one full forward pass per token
  against smallmind's cached decoding (``seed/kv_cache_vs_reference``);
* llama.cpp, when ``llama_cpp`` is importable and the models are cached: decode and prompt
  ratios of ``benchmarks/compare.py --quick --threads 1``.

Each side of a ratio is timed on its own, so a busy moment disturbs one side only: a ratio is
smallmind's best rate over the runs divided by the peer's best rate over the runs, which
converges to the undisturbed ratio as runs add up. ``--update`` makes 5 runs; a check makes
one, and more (``--retries``, 2) while some metric is below tolerance. A metric fails when
its ratio is below ``baseline * (1 - tolerance)``. The tolerance
(``baseline.json``: 0.4 unless a metric sets its own) is wide on purpose: CI runs on shared
2-core machines and on different CPUs (AMD Zen 3 / Zen 4, Intel with AMX) whose NumPy and
smallmind take different SIMD paths; it still catches what matters, a kernel falling off its
vector path (3-10x) or a decode loop gaining Python overhead. Baselines are kept per ISA path
(``avx2``, ``avx512``: what smallmind's matmul dispatch chose); a path with no baseline yet is
measured and reported but not checked. Improvements never fail; refresh the baseline with
``--update`` on a quiet machine of that ISA and commit it.

Exit status: 0 when every checked ratio is within tolerance, 1 otherwise. The summary is also
appended to ``$GITHUB_STEP_SUMMARY`` when that is set.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"          # before numpy loads its BLAS: every peer runs on one thread

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _report import machine_info

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE = HERE / "baseline.json"
DEFAULT_TOLERANCE = 0.4
ENV = dict(os.environ)


def isa_path() -> str:
    """The SIMD path smallmind's kernels take on this CPU (its matmul dispatch decides)."""
    code = "import smallmind; from smallmind._core import _matmul; print(_matmul._isa())"
    level = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=REPO, env=ENV).stdout.strip()
    return {"1": "avx2", "2": "avx512"}.get(level, f"isa{level}")


# A run gives each metric as (smallmind rate, peer rate), higher is faster for both.
Rates = dict[str, tuple[float, float]]


def kernel_rates() -> Rates:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernels.json"
        subprocess.run([sys.executable, str(HERE / "kernels.py"), "--quick", "--json", str(out)],
                       check=True, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["rows"]
    def rate(row: dict, side: str) -> float:  # GB/s and GFLOPS are rates; ms and µs are times
        return row[side] if row["unit"] in ("GB/s", "GFLOPS") else 1.0 / row[side]
    return {f"kernels/{r['kernel']} {r['shape']}": (rate(r, "smallmind"), rate(r, "numpy"))
            for r in rows if r.get("smallmind") and r.get("numpy")}


def seed_rates(repeats: int = 3) -> Rates:
    """smallmind's seed workload (KV cache) against the float reference model on the same tokens."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from smallmind import Engine, ModelConfig
    from smallmind._bench import NEW_TOKENS, PROMPT, SESSIONS
    from smallmind.models.init import random_tensors
    try:
        from smallmind.reference import gpt2_logits
    except ImportError:  # before the reference model moved into the package
        sys.path.insert(0, str(REPO / "tests"))
        from reference import gpt2_logits

    config = ModelConfig.seed_small()
    engine = Engine.from_config(config, seed=42, n_threads=1)
    tensors = random_tensors(config, 42)
    sequences = [list(PROMPT) + engine.generate(PROMPT, max_new_tokens=NEW_TOKENS, seed=s).tokens
                 for s in range(SESSIONS)]

    def ours() -> None:
        for s in range(SESSIONS):
            engine.generate(PROMPT, max_new_tokens=NEW_TOKENS, seed=s)

    def reference() -> None:  # the same tokens, greedy-free: one full forward pass per new token
        for seq in sequences:
            for n in range(len(PROMPT), len(seq)):
                np.argmax(gpt2_logits(config, tensors, seq[:n])[-1])

    ours()
    return {"seed/kv_cache_vs_reference": (1.0 / _best(ours, repeats), 1.0 / _best(reference, 1))}


def _best(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def llama_cpp_rates() -> tuple[Rates, str | None]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {}, "llama_cpp is not installed: no llama.cpp ratios"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare.json"
        subprocess.run([sys.executable, str(HERE / "compare.py"), "--quick", "--threads", "1",
                        "--new-tokens", "64", "--json", str(out), "--png", str(Path(tmp) / "c.png")],
                       check=True, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["rows"]
    rates = {}
    for r in rows:
        for kind in ("prompt", "decode"):
            ours, theirs = r.get(f"smallmind {kind} tok/s"), r.get(f"llama.cpp {kind} tok/s")
            if ours and theirs:
                rates[f"llama.cpp/{r['model']} {kind}, {r['threads']} thread"] = (ours, theirs)
    return rates, None if rates else "llama.cpp rows were skipped (models missing?)"


def compare(measured: dict[str, float], baseline: dict, isa: str) -> tuple[list[dict], bool]:
    base = baseline.get("isa", {}).get(isa, {})
    tolerances = baseline.get("tolerance", {})
    default_tol = tolerances.get("default", DEFAULT_TOLERANCE)
    rows, ok = [], True
    for name, now in sorted(measured.items()):
        ref = base.get(name)
        tol = tolerances.get(name, default_tol)
        if ref is None:
            status = "new (not checked)"
        elif now < ref * (1 - tol):
            status, ok = f"REGRESSION (< {ref * (1 - tol):.3g})", False
        else:
            status = "ok"
        rows.append({"metric": name, "baseline": ref, "now": now,
                     "change": None if ref is None else now / ref - 1, "status": status})
    return rows, ok


def summary(rows: list[dict], isa: str, notes: list[str]) -> str:
    lines = [f"### Benchmark ratios (smallmind / peer, higher is better), ISA path `{isa}`", "",
             "| metric | baseline | now | change | status |", "|---|---:|---:|---:|---|"]
    for r in rows:
        base = "—" if r["baseline"] is None else f"{r['baseline']:.3g}"
        change = "—" if r["change"] is None else f"{r['change']:+.0%}"
        lines.append(f"| {r['metric']} | {base} | {r['now']:.3g} | {change} | {r['status']} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def measure(with_llama_cpp: bool, notes: list[str]) -> Rates:
    """One run of every benchmark."""
    measured = {**kernel_rates(), **seed_rates()}
    if with_llama_cpp:
        extra, note = llama_cpp_rates()
        measured.update(extra)
        if note:
            notes.append(note)
    return measured


def ratios(runs: list[Rates]) -> dict[str, float]:
    """Each metric's ratio of smallmind's best rate to the peer's best rate over the runs.

    Each side is timed separately, so a busy moment slows one of them only: the best of each
    side over several runs is its undisturbed speed, and their ratio converges as runs add up.
    """
    names = {n for r in runs for n in r}
    return {n: max(r[n][0] for r in runs if n in r) / max(r[n][1] for r in runs if n in r) for n in names}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true",
                    help="write the measured ratios (5 runs) as this ISA path's baseline")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp comparison")
    ap.add_argument("--retries", type=int, default=2,
                    help="runs repeated while some metric is below tolerance (default: 2)")
    args = ap.parse_args(argv)

    isa = isa_path()
    info = machine_info()
    notes = [f"CPU: {info['cpu']}; {info['cpu_count']} cores; 1-minute load {info.get('loadavg_1min', 0):.1f}"]
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    runs = [measure(not args.no_llama_cpp and i == 0, notes) for i in range(5 if args.update else 1)]
    if args.update:
        baseline.setdefault("tolerance", {"default": DEFAULT_TOLERANCE})
        baseline.setdefault("isa", {})[isa] = {k: round(v, 4) for k, v in sorted(ratios(runs).items())}
        baseline["refresh"] = "python benchmarks/regression.py --update"
        BASELINE.write_text(json.dumps(baseline, indent=2) + "\n")
        notes.append(f"baseline for `{isa}` written to {BASELINE.relative_to(REPO)}")
    rows, ok = compare(ratios(runs), baseline, isa)
    while not ok and len(runs) <= args.retries:  # confirm a regression before reporting it
        runs.append(measure(False, notes))
        rows, ok = compare(ratios(runs), baseline, isa)
    notes.append(f"{len(runs)} run(s); each ratio is smallmind's best rate over the runs / the peer's best")
    if isa not in baseline.get("isa", {}):
        notes.append(f"no baseline for the `{isa}` path yet: measured, not checked "
                     "(python benchmarks/regression.py --update on such a CPU, then commit it)")
    tol = baseline.get("tolerance", {}).get("default", DEFAULT_TOLERANCE)
    notes.append(f"a metric fails below baseline x {1 - tol:.2f} (tolerance {tol:.0%}) in every run; "
                 "refresh: python benchmarks/regression.py --update")
    text = summary(rows, isa, notes)
    print(text)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
