"""Soak test of ``smallmind serve``: many streaming clients for minutes, some hanging up mid-stream.

    python benchmarks/soak.py [--model PATH] [--clients 16] [--minutes 10] [--parallel 8]
                              [--threads 2] [--disconnect 0.3] [--json PATH]
    python benchmarks/soak.py --minutes 0.5      # a quick check that it works

The server runs in its own process (``python -m smallmind serve``, same options as
benchmarks/serve.py). Each client loops until the time is up: a streaming chat or text
completion (random prompt, 8-64 tokens, every fourth one a plain non-streaming request);
with probability ``--disconnect`` it closes the connection after a random number of chunks,
which the server must notice and cancel. Counted as unexpected: any answer that is not 200,
a stream that ends without ``[DONE]`` when the client did not hang up, a transport error,
and at the end a server that still reports running or waiting requests, or is not healthy.

The server's resident memory (VmRSS) is read once the server is up (``rss_idle_mb``), after a
warm-up of ``--warmup-s`` seconds of the same load (every slot's cache then exists, and the
allocator has its working set: ``rss_start_mb``), then every 10 s; the run passes when there
were no unexpected errors (warm-up included) and RSS grew by less than ``--max-growth-mb``
(50 MB) from the start to the end. ``rss_growth_2nd_half_mb`` shows whether it is still
growing (a leak grows steadily; the allocator's working set levels off). Exit code 0 on a pass, 1
otherwise. Prints a markdown table and writes JSON (default benchmarks/results/soak.json).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from _report import machine_info, write_report
from serve import DEFAULT_MODEL, HERE, PROMPTS, REPO, free_port, server_command, stop_server, wait_ready

RSS_EVERY_S = 10.0
COLUMNS = ["minutes", "clients", "requests", "completed", "disconnected", "unexpected_errors",
           "tokens", "rss_idle_mb", "rss_start_mb", "rss_end_mb", "rss_growth_mb", "rss_growth_2nd_half_mb",
           "passed"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Tally:
    """What the clients saw, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.completed = self.disconnected = self.tokens = 0
        self.errors: list[str] = []

    def add(self, outcome: str, tokens: int = 0, error: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.tokens += tokens
            if outcome == "completed":
                self.completed += 1
            elif outcome == "disconnected":
                self.disconnected += 1
            else:
                self.errors.append(error)


def one_request(client: httpx.Client, url: str, rng: random.Random, disconnect: float) -> tuple[str, int, str]:
    """One request; returns (outcome, tokens, error): outcome is completed, disconnected or error."""
    chat = rng.random() < 0.5
    prompt = rng.choice(PROMPTS)
    body: dict = {"max_tokens": rng.randint(8, 64), "temperature": 0.8, "seed": rng.randrange(1 << 30)}
    if chat:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    if rng.random() < 0.25:  # a plain request
        r = client.post(url + path, json=body, timeout=120)
        if r.status_code != 200:
            return "error", 0, f"HTTP {r.status_code}: {r.text[:200]}"
        return "completed", r.json()["usage"]["completion_tokens"], ""
    body.update(stream=True, stream_options={"include_usage": True})
    hang_up_after = rng.randint(1, 20) if rng.random() < disconnect else None
    chunks = tokens = 0
    with client.stream("POST", url + path, json=body, timeout=120) as r:
        if r.status_code != 200:
            r.read()
            return "error", 0, f"HTTP {r.status_code}: {r.text[:200]}"
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return "completed", tokens, ""
            event = json.loads(line[6:])
            if "error" in event:
                return "error", tokens, f"error event: {event['error']}"
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                return "disconnected", 0, ""  # leaving the block closes the connection
    return "error", tokens, "the stream ended without [DONE]"


def client_loop(k: int, url: str, until: float, disconnect: float, tally: Tally) -> None:
    rng = random.Random(k)
    with httpx.Client() as client:
        while time.monotonic() < until:
            try:
                outcome, tokens, error = one_request(client, url, rng, disconnect)
            except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
                outcome, tokens, error = "error", 0, f"{type(exc).__name__}: {exc}"
            tally.add(outcome, tokens, error)


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def run_clients(url: str, args: argparse.Namespace, seconds: float, tally: Tally, pid: int,
                rss: list[tuple[float, float]], seed: int) -> None:
    """``args.clients`` client loops for ``seconds``; RSS sampled into ``rss`` meanwhile."""
    t0 = time.monotonic()
    until = t0 + seconds
    clients = [threading.Thread(target=client_loop, args=(seed + k, url, until, args.disconnect, tally),
                                daemon=True) for k in range(args.clients)]
    for t in clients:
        t.start()
    while any(t.is_alive() for t in clients):
        time.sleep(max(0.5, min(RSS_EVERY_S, until - time.monotonic())))
        rss.append((time.monotonic() - t0, rss_mb(pid)))
        if time.monotonic() > until + 300:
            tally.errors.append("clients still running 5 minutes after the end")
            break


def soak(url: str, pid: int, args: argparse.Namespace) -> dict:
    idle = rss_mb(pid)
    tally = Tally()
    run_clients(url, args, args.warmup_s, tally, pid, [], seed=10_000)
    rss = [(0.0, rss_mb(pid))]
    t0 = time.monotonic()
    run_clients(url, args, args.minutes * 60, tally, pid, rss, seed=0)
    deadline = time.monotonic() + 30  # cancelled streams are dropped at the next step
    while time.monotonic() < deadline and metric(url, "smallmind_requests_running") > 0:
        time.sleep(0.2)
    for name in ("smallmind_requests_running", "smallmind_requests_waiting"):
        if metric(url, name) != 0:
            tally.errors.append(f"{name} is {metric(url, name)} after the clients stopped")
    health = httpx.get(url + "/health", timeout=10)
    if health.status_code != 200:
        tally.errors.append(f"/health answered {health.status_code}: {health.text[:200]}")
    rss.append((time.monotonic() - t0, rss_mb(pid)))
    growth = rss[-1][1] - rss[0][1]
    half = next(v for t, v in rss if t >= rss[-1][0] / 2)
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": tally.requests,
        "completed": tally.completed,
        "disconnected": tally.disconnected,
        "unexpected_errors": len(tally.errors),
        "error_samples": tally.errors[:5],
        "tokens": tally.tokens,
        "warmup_s": args.warmup_s,
        "rss_idle_mb": idle,
        "rss_start_mb": rss[0][1],
        "rss_end_mb": rss[-1][1],
        "rss_max_mb": max(v for _, v in rss),
        "rss_growth_mb": growth,
        "rss_growth_2nd_half_mb": rss[-1][1] - half,
        "rss_samples": [(round(t, 1), round(v, 1)) for t, v in rss],
        "passed": not tally.errors and growth < args.max_growth_mb,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=512, help="context per slot")
    p.add_argument("--disconnect", type=float, default=0.3, help="share of streams the client hangs up on")
    p.add_argument("--max-growth-mb", type=float, default=50.0)
    p.add_argument("--warmup-s", type=float, default=30.0, help="seconds of load before RSS is first read")
    p.add_argument("--json", type=Path, default=HERE / "results" / "soak.json")
    args = p.parse_args()
    if not args.model.exists():
        print(f"model {args.model} is missing (python tools/fetch_models.py)", file=sys.stderr)
        return 2
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = server_command("smallmind", args, port)
    assert cmd is not None
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "soak_server.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, url)
            row = soak(url, proc.pid, args)
        finally:
            stop_server(proc)
    meta = {**machine_info(), "model": args.model.name, "parallel": args.parallel, "threads": args.threads,
            "disconnect": args.disconnect, "warmup_s": args.warmup_s, "max_growth_mb": args.max_growth_mb, "command": " ".join(sys.argv)}
    write_report("soak", [row], COLUMNS, meta, json_path=args.json)
    for error in row["error_samples"]:
        print("unexpected:", error)
    print("PASSED" if row["passed"] else "FAILED")
    return 0 if row["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
