"""Concurrent streaming clients against OpenAI-compatible servers on this machine.

    python benchmarks/serve.py [--model PATH] [--threads 2] [--clients 1,4,8,16,32]
                               [--requests 2] [--max-tokens 64] [--parallel 8] [--smallmind-parallel P]
                               [--servers smallmind,llama-cpp-python] [--llama-server BIN]
                               [--quick] [--json PATH] [--png PATH]

Each server runs in its own process on a free 127.0.0.1 port, on the same GGUF file (default:
SmolLM2-135M-Instruct Q4_1 from ~/.cache/smallmind) with the same thread count:

* ``smallmind``: ``python -m smallmind serve --parallel P`` (continuous batching over P slots;
  ``--smallmind-parallel`` gives it more slots than the peers, e.g. 32 for the goal of a p99
  time to first token under 2 s at 32 clients, which no server meets while 24 of them wait
  for a slot);
* ``llama-cpp-python``: ``python -m llama_cpp.server`` (one request at a time, behind a lock),
  when ``import llama_cpp`` works;
* ``llama-server``: llama.cpp's own server with ``-np P`` (continuous batching over P slots), found
  as ``--llama-server BIN``, else ``$SMALLMIND_LLAMA_SERVER``, else ``~/.cache/smallmind/llama-server``,
  else ``llama-server`` on the PATH. Build it from the llama.cpp tree that llama-cpp-python 0.3.36
  vendors (so both llama.cpp peers run the same code)::

      pip download --no-deps --no-binary llama-cpp-python --no-build-isolation \
          llama-cpp-python==0.3.36 -d /tmp/lcpp
      cd /tmp/lcpp && tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
      cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release
      cmake --build build --target llama-server -j 2     # 10-30 minutes on 2 cores
      cp build/bin/llama-server ~/.cache/smallmind/llama-server

For each client count N, N threads each send ``--requests`` streaming ``/v1/completions``
requests one after another (a plain-text prompt, ``max_tokens`` tokens, temperature 0.7 with a
seed, end-of-text tokens banned through ``logit_bias`` so every answer has ``max_tokens``
tokens). Each server is first warmed up with one such round at as many clients as it runs
sequences at once (its slots, up to the largest client count), so first-use costs (caches paged
in, buffers grown) stay out of the figures. Measured per request, on the client: time to first
token (request sent -> first text chunk) and the gaps between later chunks (inter-token
latency); per run: aggregate tokens/s = completion tokens of all requests / wall time from the
first request to the last answer, and errors (non-200 answers, broken streams, timeouts); and
the CPU time per completion token of the server process (all its threads, spinning ones
included) and of this client process, which runs on the same cores: figures a loaded machine
distorts less than rates. Prints a markdown table, writes JSON (default
benchmarks/results/serve.json) and a PNG chart when matplotlib is importable.
After the table it prints the ratios the serving goals are stated in (8 clients against one
client of smallmind, against llama-server and against llama-cpp-python; p99 TTFT at 32 clients).
Figures from a machine shared with other work are noisy: compare servers within one run (the
1-minute load average is recorded with each row).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
from _report import machine_info, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))
DEFAULT_MODEL = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins",
    "Here is a recipe for a simple tomato soup:",
    "The three laws of motion state that",
    "Dear diary, today I finally",
    "In the year 2150, the first city on Mars",
]
LLAMA_SERVER_ENV = "SMALLMIND_LLAMA_SERVER"
START_S = 180.0
REQUEST_S = 300.0
COLUMNS = [
    "server",
    "clients",
    "requests",
    "errors",
    "tok_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "server_cpu_ms_per_tok",
    "client_cpu_ms_per_tok",
    "load_1min",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, args: argparse.Namespace, port: int) -> list[str] | None:
    model, threads = str(args.model), str(args.threads)
    if name == "smallmind":
        return [
            sys.executable,
            "-m",
            "smallmind",
            "serve",
            "--model",
            model,
            "--threads",
            threads,
            "--parallel",
            str(server_slots(name, args)),
            "--ctx",
            str(args.ctx),
            "--port",
            str(port),
            "--max-queue",
            "256",
        ]
    if name == "llama-cpp-python":
        try:
            import llama_cpp
            import llama_cpp.server  # noqa: F401
        except ImportError:
            return None
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            model,
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--n_ctx",
            str(args.ctx),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    if name == "llama-server":
        if not args.llama_server:
            return None
        return [
            args.llama_server,
            "-m",
            model,
            "-t",
            threads,
            "-tb",
            threads,
            "-np",
            str(args.parallel),
            "-c",
            str(args.ctx * args.parallel),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    raise ValueError(f"unknown server {name!r}")


def server_slots(name: str, args: argparse.Namespace) -> int:
    """Sequences the server runs at once."""
    if name == "smallmind":
        return getattr(args, "smallmind_parallel", None) or args.parallel
    return 1 if name == "llama-cpp-python" else args.parallel


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server started by this script, killing it if it has not exited in 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready after {START_S:.0f} s")


def connect(url: str) -> http.client.HTTPConnection:
    """A keep-alive connection to ``url`` (http://host:port) for :func:`stream_one`."""
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=REQUEST_S)


def stream_one(conn: http.client.HTTPConnection, body: dict) -> dict:
    """One streaming request: TTFT, inter-token gaps, completion tokens, or the error.

    The load generator shares the cores with the server, so it reads the stream with the
    standard library's http.client: half the CPU per streamed token of httpx (its chunked
    decoding and line splitting run in pure Python), which every server's figures gain alike."""
    stamps: list[float] = []
    usage = None
    payload = json.dumps(body)
    try:
        # A second attempt only when the server had closed this kept-alive connection between
        # two requests (llama-server does) before reading the new one: it goes again on a new
        # connection, as httpx and urllib3 do for a stale pooled connection.
        for attempt in (1, 2):
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/completions", body=payload,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if attempt == 2:
                    raise
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read().decode(errors='replace')[:200]}"}
        done = False
        for line in r:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].rstrip(b"\r\n")
            if data == b"[DONE]":
                done = True
                break
            event = json.loads(data)
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    stamps.append(time.perf_counter())
        if not done:
            conn.close()
            return {"error": "the stream ended without [DONE]"}
    except (http.client.HTTPException, OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        conn.close()  # reconnects on the next request
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:  # the end of the chunked body, so that the connection serves the next request
        r.read()
    except (http.client.HTTPException, OSError):  # a server that drops the connection after [DONE]
        conn.close()  # (llama-cpp-python's, when it ends a stream for a waiting request)
    if not stamps:
        return {"error": "no text streamed"}
    tokens = usage["completion_tokens"] if usage else len(stamps)
    return {
        "ttft": stamps[0] - t0,
        "gaps": [b - a for a, b in itertools.pairwise(stamps)],
        "tokens": tokens,
        "end": stamps[-1],
    }


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(url: str, n_clients: int, args: argparse.Namespace, banned: list[int],
             server_pid: int | None = None) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    # Every client is connected before the clock starts and all are released together: the
    # wall time runs from the first request to the last answer, as the docstring says, not
    # over the load generator's setup (an httpx.Client, used here before, cost 20-250 ms of
    # CPU to build, and 8 clients paid it one after the other inside the measured time).
    clients = [connect(url) for _ in range(n_clients)]
    start = threading.Barrier(n_clients + 1)

    def client_loop(k: int) -> None:
        start.wait()
        for i in range(args.requests):
            body = {
                "prompt": PROMPTS[(k + i) % len(PROMPTS)],
                "max_tokens": args.max_tokens,
                "temperature": 0.7,
                "seed": 1000 * k + i,
                "stream": True,
                "stream_options": {"include_usage": True},
                "logit_bias": {str(t): -100 for t in banned},
            }
            out = stream_one(clients[k], body)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(n_clients)]
    for t in threads:
        t.start()
    server_cpu0 = process_cpu_s(server_pid) if server_pid else None
    client_cpu0 = sum(os.times()[:2])
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(REQUEST_S * args.requests + 60)
    wall = time.perf_counter() - t0
    client_cpu = sum(os.times()[:2]) - client_cpu0
    server_cpu1 = process_cpu_s(server_pid) if server_pid else None
    for client in clients:
        client.close()
    ok = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in ok)
    errors = [r["error"] for r in results if "error" in r] + ["client still running"] * sum(
        t.is_alive() for t in threads
    )
    ttft = sorted(r["ttft"] for r in ok)
    gaps = sorted(g for r in ok for g in r["gaps"])
    return {
        "clients": n_clients,
        "load_1min": round(os.getloadavg()[0], 2),
        "requests": len(results),
        "errors": len(errors),
        "error_samples": errors[:3],
        "tok_per_s": tokens / wall if ok else 0.0,
        "wall_s": wall,
        "ttft_p50_ms": _pct(ttft, 50) * 1e3,
        "ttft_p99_ms": _pct(ttft, 99) * 1e3,
        "itl_p50_ms": _pct(gaps, 50) * 1e3,
        "itl_p99_ms": _pct(gaps, 99) * 1e3,
        "server_cpu_ms_per_tok": (server_cpu1 - server_cpu0) / tokens * 1e3
        if tokens and server_cpu0 is not None and server_cpu1 is not None else float("nan"),
        "client_cpu_ms_per_tok": client_cpu / tokens * 1e3 if tokens else float("nan"),
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


def banned_tokens(model: Path) -> list[int]:
    """End-of-text ids of the model, banned so every answer runs to max_tokens."""
    sys.path.insert(0, str(REPO))
    from smallmind.formats.loader import load_model

    tok = load_model(model).tokenizer
    return sorted(tok.stop_ids()) if tok is not None else []


def bench_server(name: str, args: argparse.Namespace, banned: list[int]) -> list[dict]:
    port = free_port()
    cmd = server_command(name, args, port)
    if cmd is None:
        print(f"{name}: not installed, skipped", file=sys.stderr)
        return [{"server": name, "skipped": "not installed"}]
    url = f"http://127.0.0.1:{port}"
    log = open(HERE / "results" / f"serve_{name}.log", "w")  # noqa: SIM115  closed below
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_ready(proc, url)
        # Warm-up: one round of the load at the most concurrency the server batches (its
        # slots), so first-use costs (each slot's KV cache paged in, batch buffers grown to
        # their size) stay out of the figures: what is measured is a server in service.
        run_load(url, min(max(args.clients), server_slots(name, args)), args, banned)
        for n in args.clients:
            row = {"server": name, **run_load(url, n, args, banned, proc.pid)}
            print(
                f"{name:>16}  {n:>3} clients: {row['tok_per_s']:8.1f} tok/s, TTFT p50 "
                f"{row['ttft_p50_ms']:8.0f} ms, errors {row['errors']}",
                file=sys.stderr,
            )
            rows.append(row)
    except RuntimeError as exc:
        rows.append({"server": name, "skipped": str(exc)})
    finally:
        stop_server(proc)
        log.close()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG chart", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for server in sorted({r["server"] for r in rows if "clients" in r}):
        mine = [r for r in rows if r["server"] == server and "clients" in r]
        ax1.plot([r["clients"] for r in mine], [r["tok_per_s"] for r in mine], marker="o", label=server)
        ax2.plot(
            [r["clients"] for r in mine], [r["ttft_p99_ms"] / 1e3 for r in mine], marker="o", label=server
        )
    ax1.set(xlabel="concurrent streaming clients", ylabel="aggregate tokens/s", xscale="log", xticks=[])
    ax2.set(xlabel="concurrent streaming clients", ylabel="p99 time to first token (s)", xscale="log")
    for ax in (ax1, ax2):
        ax.set_xticks(sorted({r["clients"] for r in rows if "clients" in r}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def find_llama_server(given: str | None) -> str | None:
    """The llama-server binary: ``given``, the environment variable, the cache, or the PATH."""
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)):
            raise SystemExit(f"--llama-server {given}: not an executable file")
        return given
    for candidate in (os.environ.get(LLAMA_SERVER_ENV), str(CACHE / "llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("llama-server")


def ratios(rows: list[dict]) -> dict[str, float]:
    """The serving goals' ratios, from the rows of one run (those that were measured)."""
    def get(server: str, clients: int, key: str = "tok_per_s") -> float | None:
        for r in rows:
            if r["server"] == server and r["clients"] == clients and r.get(key):
                return float(r[key])
        return None

    out: dict[str, float] = {}
    mine8, mine1 = get("smallmind", 8), get("smallmind", 1)
    if mine8 and mine1:
        out["smallmind 8 clients / 1 client"] = mine8 / mine1
    for peer in ("llama-server", "llama-cpp-python"):
        for n, mine in ((1, mine1), (8, mine8)):
            theirs = get(peer, n)
            if mine and theirs:
                out[f"smallmind / {peer}, {n} client{'s' if n > 1 else ''}"] = mine / theirs
    p99 = get("smallmind", 32, "ttft_p99_ms")
    if p99:
        out["smallmind p99 TTFT at 32 clients, s"] = p99 / 1e3
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", default="1,4,8,16,32", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--parallel", type=int, default=8, help="slots of smallmind serve / llama-server -np")
    p.add_argument("--smallmind-parallel", type=int, default=None, help="slots of smallmind serve alone")
    p.add_argument("--ctx", type=int, default=512, help="context per slot")
    p.add_argument("--servers", default="smallmind,llama-cpp-python,llama-server")
    p.add_argument("--llama-server", default=None,
                   help=f"llama.cpp's llama-server binary (default: ${LLAMA_SERVER_ENV}, "
                        "~/.cache/smallmind/llama-server, or the PATH)")
    p.add_argument("--quick", action="store_true", help="1, 4 and 8 clients, one request each")
    p.add_argument("--json", type=Path, default=HERE / "results" / "serve.json")
    p.add_argument("--png", type=Path, default=HERE / "results" / "serve.png")
    args = p.parse_args()
    args.clients = [int(c) for c in ("1,4,8" if args.quick else args.clients).split(",")]
    args.llama_server = find_llama_server(args.llama_server)
    if args.quick:
        args.requests = 1
    if not args.model.exists():
        print(f"model {args.model} is missing (python tools/fetch_models.py)", file=sys.stderr)
        return 2
    (HERE / "results").mkdir(exist_ok=True)
    banned = banned_tokens(args.model)
    rows = []
    for name in args.servers.split(","):
        rows += bench_server(name.strip(), args, banned)
    meta = {
        **machine_info(),
        "model": args.model.name,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "parallel": args.parallel,
        "smallmind_parallel": args.smallmind_parallel or args.parallel,
        "requests_per_client": args.requests,
        "command": " ".join(sys.argv),
        "llama_server": args.llama_server,
    }
    measured = [r for r in rows if "clients" in r]
    meta["ratios"] = ratios(measured)
    write_report("serve", measured, COLUMNS, meta, json_path=args.json)
    for name, value in meta["ratios"].items():
        print(f"{name}: {value:.2f}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['server']}: skipped ({r['skipped']})")
    if measured:
        plot(measured, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
