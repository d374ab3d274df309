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


class _FakeServer:
    """A local HTTP/1.1 server answering /v1/completions with a canned SSE stream (chunked,
    one chunk per event, as the servers stream), or with ``status`` and a JSON error."""

    def __init__(self, events: list[str], status: int = 200, cut: bool = False, close: bool = False):
        import http.server
        import threading

        self.requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests += 1
                if status != 200:
                    body = b'{"error": {"message": "bad"}}'
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in events:
                    data = event.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                if cut:  # the connection dropped inside a chunk, the body never terminated
                    self.wfile.write(b"5\r\nab")
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = close  # a kept-alive connection closed, unannounced

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def test_stream_one_times_each_text_chunk_and_reuses_its_connection():
    chunks = [_sse({"choices": [{"text": t}]}) for t in ("Hel", "", "lo", " there")]
    usage = _sse({"choices": [], "usage": {"completion_tokens": 4}})
    server = _FakeServer([": keep-alive\n\n", *chunks, usage, "data: [DONE]\n\n"])
    try:
        conn = serve_bench.connect(server.url)
        for _ in range(2):  # the second request goes over the same kept-alive connection
            out = serve_bench.stream_one(conn, {"prompt": "x", "stream": True})
            assert "error" not in out, out
            assert out["tokens"] == 4  # from usage; the empty text chunk has no time stamp
            assert len(out["gaps"]) == 2 and all(g >= 0 for g in out["gaps"])
            assert 0 <= out["ttft"]
        assert server.requests == 2
        conn.close()
    finally:
        server.close()


def test_a_stream_cut_after_done_counts_and_the_next_request_reconnects():
    """llama-cpp-python's server ends a stream with [DONE] and drops the connection when
    another request waits: the answer so far counts, and the client connects afresh."""
    server = _FakeServer([_sse({"choices": [{"text": "a"}]}), "data: [DONE]\n\n"], cut=True)
    try:
        conn = serve_bench.connect(server.url)
        for _ in range(2):
            out = serve_bench.stream_one(conn, {"prompt": "x"})
            assert "error" not in out and out["tokens"] == 1
        assert server.requests == 2
    finally:
        server.close()


def test_a_kept_alive_connection_closed_by_the_server_is_replaced():
    """llama-server closes connections between requests without saying so: the request sent
    on the stale connection goes again on a new one instead of counting as an error."""
    server = _FakeServer([_sse({"choices": [{"text": "a"}]}), "data: [DONE]\n\n"], close=True)
    try:
        conn = serve_bench.connect(server.url)
        for _ in range(3):
            out = serve_bench.stream_one(conn, {"prompt": "x"})
            assert "error" not in out and out["tokens"] == 1, out
        assert server.requests == 3
    finally:
        server.close()


def test_stream_one_reports_errors_instead_of_raising():
    server = _FakeServer([], status=503)
    cut = _FakeServer([_sse({"choices": [{"text": "a"}]})])  # no [DONE]
    garbled = _FakeServer(["data: {not json\n\n", "data: [DONE]\n\n"])
    try:
        out = serve_bench.stream_one(serve_bench.connect(server.url), {"prompt": "x"})
        assert out["error"].startswith("HTTP 503")
        assert serve_bench.stream_one(serve_bench.connect(cut.url), {})["error"] == "the stream ended without [DONE]"
        assert "JSONDecodeError" in serve_bench.stream_one(serve_bench.connect(garbled.url), {})["error"]
        closed = serve_bench.connect("http://127.0.0.1:1")
        assert "ConnectionRefusedError" in serve_bench.stream_one(closed, {})["error"]
    finally:
        for s in (server, cut, garbled):
            s.close()


def test_run_load_counts_every_client_from_the_first_request():
    import argparse

    chunks = [_sse({"choices": [{"text": "t"}]})] * 3
    server = _FakeServer([*chunks, "data: [DONE]\n\n"])
    try:
        args = argparse.Namespace(requests=2, max_tokens=3)
        row = serve_bench.run_load(server.url, 4, args, banned=[0])
        assert row["errors"] == 0 and row["requests"] == 8 and server.requests == 8
        assert row["tok_per_s"] == pytest.approx(8 * 3 / row["wall_s"])
    finally:
        server.close()
