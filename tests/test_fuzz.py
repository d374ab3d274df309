"""A bounded fuzz run in the suite: seeded mutations of a GGUF (embedded GPT-2 and
stories260K converted) and of a llama2.c model and its tokenizer, each loaded and asked for
a few tokens by one child worker (tools/fuzz.py). Only SmallMindError subclasses may come
out: no crash, no hang, no other exception. ``python tools/fuzz.py --files 20000`` runs
the same harness for longer."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from fuzz import fuzz


@pytest.mark.slow
def test_mutated_model_files_give_only_smallmind_errors():
    report = fuzz(450, seed=20261129, timeout=60.0)
    assert report.files == 450
    assert report.findings == []
    assert report.loaded > 0  # some mutations leave a loadable model that then generates
    assert sum(report.outcomes.values()) == report.files
