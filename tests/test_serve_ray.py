"""Scale-out on Ray Serve: a local Ray instance, 2 replicas of the smallmind app, driven by the
official ``openai`` client (slow: starting Ray takes a while on 2 cores)."""

from __future__ import annotations

import concurrent.futures

import pytest

serve = pytest.importorskip("ray.serve", reason="the ray extra is not installed")
openai = pytest.importorskip("openai")

import ray
from conftest import REPO
from serve_utils import free_port

from smallmind import Engine
from smallmind.serve.ray import app_builder


def test_app_builder_validates_its_arguments():
    with pytest.raises(ValueError, match="replica"):
        app_builder({"replica": 2})
    with pytest.raises(ValueError):
        app_builder({"replicas": "two"})


@pytest.mark.slow
def test_two_replicas_answer_the_openai_client():
    port = free_port()
    # A new single-node Ray on this machine only. Ray's own processes talk over this machine's
    # interface address (Ray resolves 127.0.0.1 to it); the HTTP proxy listens on 127.0.0.1.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            app_builder({"replicas": 2, "cpus": 1, "parallel": 2}),
            name="smallmind",
            route_prefix="/",
            blocking=False,
        )
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60.0
        )

        def ask(prompt: str) -> str:
            reply = client.completions.create(model="x", prompt=prompt, max_tokens=20, temperature=0)
            return reply.choices[0].text

        prompts = ["ROMEO:", "JULIET:", "KING:", "QUEEN:", "ROMEO:", "JULIET:"]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            texts = list(pool.map(ask, prompts, timeout=120))
        engine = Engine.default()
        for prompt, text in zip(prompts, texts, strict=False):
            assert text == engine.generate(prompt, max_new_tokens=20, temperature=0).text
        stream = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True, temperature=0
        )
        assert len("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)) > 0
        status = serve.status().applications["smallmind"].deployments["smallmind"]
        assert status.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
