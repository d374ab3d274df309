"""Shared output and timing helpers for the benchmark scripts.

    from _report import best_time, machine_info, write_report

    seconds = best_time(lambda: kernel(x, out))          # best of N, per call
    write_report("kernels", rows, ["kernel", "shape", "smallmind"], meta=machine_info())

``write_report`` prints a markdown table of ``rows`` (dicts; ``columns`` picks and orders
the keys shown) and writes ``{"name", "meta", "columns", "rows"}`` as JSON to
``benchmarks/results/NAME.json`` (or ``json_path``). Rows keep their raw numbers in
the JSON; only the table formats them. Scripts run as ``python benchmarks/x.py`` have
this folder on ``sys.path``, so a plain ``from _report import ...`` works; importing it also
puts the checkout's root there, so ``import smallmind`` finds an in-place build.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_REPO = str(RESULTS_DIR.parent.parent)
if _REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _REPO)


def best_time(fn: Callable[[], object], *, repeat: int = 7, min_sample_s: float = 0.002) -> float:
    """Seconds per call of ``fn()``: the best of ``repeat`` samples.

    Each sample times enough back-to-back calls to last ``min_sample_s`` (so
    microsecond kernels are not lost in timer noise); the best sample is the least
    disturbed by the other processes of a shared machine.
    """
    fn()                                                   # warm caches and lazy setup
    start = time.perf_counter_ns()
    fn()
    once = max(time.perf_counter_ns() - start, 1)
    number = max(1, math.ceil(min_sample_s * 1e9 / once))
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best * 1e-9


def machine_info() -> dict:
    """CPU model, Python / NumPy versions, thread pins and load: what a figure depends on."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ.get(k) for k in
                        ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        # the kernel switches a run was made under (benchmarks/issue7.sh sets them)
        "smallmind_env": {k: os.environ.get(k) for k in ("SMALLMIND_ISA", "SMALLMIND_REPACK")},
    }
    if "numpy" in sys.modules:
        info["numpy"] = sys.modules["numpy"].__version__
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_cell(value: object) -> str:
    """Numbers with 3 significant digits (thousands kept whole), None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_report(name: str, rows: list[dict], columns: list[str], meta: dict,
                 json_path: str | os.PathLike | None = None) -> Path:
    """Print ``rows`` as a markdown table and write them, with ``meta``, as JSON.

    Returns the JSON path (``benchmarks/results/NAME.json`` unless ``json_path``).
    """
    print(markdown_table(rows, columns))
    path = Path(json_path) if json_path is not None else RESULTS_DIR / f"{name}.json"
    return write_json(path, {"name": name, "meta": meta, "columns": columns, "rows": rows})


def write_json(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` (creating its folder) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return path
