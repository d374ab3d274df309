"""The CI benchmark job's verdicts (benchmarks/regression.py) and its committed baseline."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import regression

BASELINE = {"tolerance": {"default": 0.4, "noisy": 0.6}, "isa": {"avx2": {"fast": 10.0, "noisy": 2.0}}}


def test_a_ratio_below_tolerance_fails_and_within_or_above_passes():
    rows, ok = regression.compare({"fast": 6.5, "noisy": 0.9}, BASELINE, "avx2")
    assert ok and [r["status"] for r in rows] == ["ok", "ok"]
    rows, ok = regression.compare({"fast": 5.9, "noisy": 30.0}, BASELINE, "avx2")
    assert not ok and rows[0]["status"].startswith("REGRESSION") and rows[1]["status"] == "ok"
    rows, ok = regression.compare({"fast": 10.0, "noisy": 0.7}, BASELINE, "avx2")  # its own tolerance
    assert not ok and rows[1]["status"].startswith("REGRESSION")


def test_an_isa_path_or_metric_without_baseline_is_reported_not_checked():
    rows, ok = regression.compare({"fast": 0.1}, BASELINE, "avx512")
    assert ok and rows[0]["status"] == "new (not checked)"
    text = regression.summary(rows, "avx512", ["a note"])
    assert "| fast | — | 0.1 | — | new (not checked) |" in text and "- a note" in text


def test_each_side_of_a_ratio_is_its_best_over_the_runs():
    # Run 1: smallmind disturbed; run 2: the peer disturbed. Neither disturbance survives.
    runs = [{"a": (1.0, 4.0), "b": (5.0, 1.0)}, {"a": (8.0, 2.0)}]
    assert regression.ratios(runs) == {"a": 2.0, "b": 5.0}


def test_committed_baseline_is_well_formed():
    baseline = json.loads((BENCH / "baseline.json").read_text())
    assert 0 < baseline["tolerance"]["default"] < 1
    assert "regression.py --update" in baseline["refresh"]
    assert baseline["isa"]["avx2"]
    for ratios in baseline["isa"].values():
        assert all(isinstance(v, float) and v > 0 for v in ratios.values())
    assert any(name.startswith("kernels/") for name in baseline["isa"]["avx2"])
    assert "seed/kv_cache_vs_reference" in baseline["isa"]["avx2"]


def test_compare_rounds_keep_best_rates_and_take_the_median_of_each_rounds_ratio():
    import compare

    def rows(prompt: float, decode: float) -> list[dict]:
        return [{"threads": 1, "prompt_tok_per_s": prompt, "decode_tok_per_s": decode,
                 "prompt_runs_tok_per_s": [prompt], "decode_runs_tok_per_s": [decode]}]

    # the machine slows down in round 2 and speeds up in round 3: both engines alike
    lc = compare.merge_rounds([rows(100, 40), rows(50, 20), rows(120, 60)])[0]
    sm = compare.merge_rounds([rows(300, 60), rows(140, 34), rows(330, 84)])[0]
    assert (sm["prompt_tok_per_s"], sm["decode_tok_per_s"]) == (330, 84)
    assert sm["decode_runs_tok_per_s"] == [60, 34, 84]
    assert compare.round_ratios(sm, lc, "decode_tok_per_s") == [1.5, 1.7, 1.4]
    assert compare._ratio(sm, lc, "decode_tok_per_s") == 1.5
    assert compare._ratio(sm, lc, "prompt_tok_per_s") == 2.8
    skipped = [{"threads": 1, "skipped": "not installed"}]
    assert compare._ratio(sm, compare.merge_rounds([skipped, skipped, skipped])[0], "decode_tok_per_s") is None
