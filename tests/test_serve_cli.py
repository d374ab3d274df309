"""``python -m smallmind serve`` as a user runs it, and a real model's chat template over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from conftest import REPO, cached_model
from serve_utils import free_port, running

from smallmind import Engine
from smallmind.cli import build_parser
from smallmind.serve import create_app

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_serve_options_and_safe_defaults():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.api_key) == ("127.0.0.1", 8000, None, None)
    args = build_parser().parse_args(
        ["serve", "--parallel", "8", "--threads", "2", "--ctx", "1024", "--api-key", "k", "--port", "9001"]
    )
    assert (args.parallel, args.threads, args.ctx, args.api_key, args.port) == (8, 2, 1024, "k", 9001)


def test_smallmind_serve_from_a_shell():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smallmind",
            "serve",
            "--port",
            str(port),
            "--parallel",
            "2",
            "--api-key",
            "k",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)
        reply = client.completions.create(model="x", prompt="ROMEO:", max_tokens=12, temperature=0)
        assert (
            reply.choices[0].text
            == Engine.default().generate("ROMEO:", max_new_tokens=12, temperature=0).text
        )
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode in (0, -15)


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--parallel", "0"], "parallel"),
        (["--timeout", "0"], "timeout"),
        (["--max-tokens", "-1"], "max_tokens"),
        (["--port", "70000"], "--port"),
        (["--prefill-chunk", "0"], "prefill_chunk"),
    ],
)
def test_serve_refuses_bad_options(option, named):
    done = subprocess.run(
        [sys.executable, "-m", "smallmind", "serve", *option],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("smallmind: error:") and named in done.stderr


def test_smollm2_chat_template_and_prefix_reuse_across_turns():
    engine = Engine.load(cached_model(SMOLLM2), n_ctx=512, n_threads=2)
    with running(create_app(engine, parallel=2)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model="x", messages=messages, max_tokens=12, temperature=0)
        solo = engine.chat(messages, max_new_tokens=12, temperature=0)
        assert reply.choices[0].message.content == solo.text
        assert "<|im_" not in reply.choices[0].message.content
        assert reply.usage.prompt_tokens == len(solo.prompt_tokens)
        assert reply.model == "Smollm2 135M 8k Lc100K Mix1 Ep2"
        # The next turn re-sends the conversation: the slot's cache holds all of the first turn.
        messages += [
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": "And of Italy?"},
        ]
        second = client.chat.completions.create(model="x", messages=messages, max_tokens=4, temperature=0)
        assert second.usage.prompt_tokens_details.cached_tokens >= reply.usage.prompt_tokens
