"""The serving benchmarks' own logic (benchmarks/serve.py, benchmarks/soak.py): the ratios the
goals are stated in, finding llama-server, and a short soak run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
pytest.importorskip("httpx")

from conftest import cached_model

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import serve as serve_bench


def test_ratios_compare_servers_at_the_same_client_count():
    rows = [
        {"server": "smallmind", "clients": 1, "tok_per_s": 100.0, "ttft_p99_ms": 50.0},
        {"server": "smallmind", "clients": 8, "tok_per_s": 300.0, "ttft_p99_ms": 400.0},
        {"server": "smallmind", "clients": 32, "tok_per_s": 310.0, "ttft_p99_ms": 1500.0},
        {"server": "llama-server", "clients": 8, "tok_per_s": 150.0, "ttft_p99_ms": 900.0},
        {"server": "llama-cpp-python", "clients": 1, "tok_per_s": 125.0, "ttft_p99_ms": 60.0},
        {"server": "llama-cpp-python", "clients": 8, "tok_per_s": 0.0, "ttft_p99_ms": 0.0},  # all failed
    ]
    assert serve_bench.ratios(rows) == {
        "smallmind 8 clients / 1 client": 3.0,
        "smallmind / llama-server, 8 clients": 2.0,
        "smallmind / llama-cpp-python, 1 client": 0.8,
        "smallmind p99 TTFT at 32 clients, s": 1.5,
    }


def test_llama_server_is_found_from_the_flag_or_the_environment(tmp_path, monkeypatch):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert serve_bench.find_llama_server(str(binary)) == str(binary)
    with pytest.raises(SystemExit, match="not an executable"):
        serve_bench.find_llama_server(str(tmp_path / "missing"))
    monkeypatch.setenv(serve_bench.LLAMA_SERVER_ENV, str(binary))
    assert serve_bench.find_llama_server(None) == str(binary)


@pytest.mark.slow
def test_a_short_soak_passes(tmp_path):
    model = cached_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--model", str(model), "--minutes", "0.25", "--warmup-s", "5", "--clients", "4",
         "--parallel", "2", "--threads", "1", "--disconnect", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(BENCH.parent)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["unexpected_errors"] == 0 and row["passed"]
    assert row["completed"] > 0 and row["requests"] == row["completed"] + row["disconnected"]
    assert row["rss_start_mb"] > 0
