"""The OpenAI-compatible server over real HTTP: uvicorn on a loopback port, driven by the official
``openai`` client and by raw ``httpx`` (SSE parsed by hand). Every wait is bounded."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_utils import running

from smallmind import Engine
from smallmind.serve import create_app
from smallmind.serve._backend import run_step

TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default()


@pytest.fixture(scope="module")
def server(engine):
    with running(create_app(engine, parallel=3)) as url:
        yield url


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30.0)


def sse_events(response) -> list:
    """The ``data:`` payloads of an SSE response, parsed; the literal [DONE] kept as a string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def slow_steps(app, delay: float) -> None:
    """Make each engine step of ``app`` take at least ``delay`` seconds (for timing tests)."""

    def step(work):
        time.sleep(delay)
        return run_step(work)

    app.state.scheduler._step = step


def metric(url: str, name: str, **headers) -> float:
    text = httpx.get(url + "/metrics", headers=headers, timeout=TIMEOUT).text
    values = [
        float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))
    ]
    return sum(values)


def test_completion_is_the_engines_greedy_text(server, engine):
    reply = client(server).completions.create(model="x", prompt="ROMEO:", max_tokens=24, temperature=0)
    solo = engine.generate("ROMEO:", max_new_tokens=24, temperature=0)
    assert reply.choices[0].text == solo.text
    assert reply.choices[0].finish_reason == "length"
    assert reply.object == "text_completion"
    assert reply.usage.prompt_tokens == len(solo.prompt_tokens)
    assert reply.usage.completion_tokens == 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 24


def test_chat_completion_uses_the_chat_format(server, engine):
    messages = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who art thou?"}]
    reply = client(server).chat.completions.create(
        model="x", messages=messages, max_tokens=16, temperature=0, user="tester", extra_body={"unknown": 1}
    )
    solo = engine.chat(messages, max_new_tokens=16, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == solo.text
    assert choice.finish_reason == ("length" if solo.finish_reason == "length" else "stop")
    assert reply.usage.prompt_tokens == len(solo.prompt_tokens)


def test_streaming_chat_joins_to_the_full_answer_and_reports_usage(server):
    c = client(server)
    kwargs = {
        "model": "x",
        "messages": [{"role": "user", "content": "Speak."}],
        "max_tokens": 30,
        "temperature": 0,
    }
    full = c.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == (
        30 if finishes == ["length"] else len(text) and chunks[-1].usage.completion_tokens
    )


def test_raw_sse_stream_of_completions(server, engine):
    body = {
        "prompt": "KING:",
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    usage = events[-2]["usage"]
    assert usage == {
        "prompt_tokens": 5,
        "completion_tokens": 12,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
    }
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == engine.generate("KING:", max_new_tokens=12, temperature=0).text
    assert events[-3]["choices"][0]["finish_reason"] == "length"


def test_n_choices_with_a_seed_are_reproducible(server):
    c = client(server)
    kwargs = {
        "model": "x",
        "prompt": "ROMEO:",
        "max_tokens": 20,
        "temperature": 1.0,
        "top_p": 0.95,
        "seed": 5,
        "n": 3,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.2,
        "logit_bias": {"101": -100},
    }
    first = c.completions.create(**kwargs)
    second = c.completions.create(**kwargs)
    assert [ch.index for ch in first.choices] == [0, 1, 2]
    assert [ch.text for ch in first.choices] == [ch.text for ch in second.choices]
    assert len({ch.text for ch in first.choices}) > 1  # each choice has its own seed
    assert all("e" not in ch.text for ch in first.choices)  # token 101 is "e": banned
    assert first.usage.completion_tokens == 60


def test_concurrent_streams_get_their_solo_answers(server, engine):
    prompts = ["ROMEO:", "JULIET:", "KING:", "QUEEN:", "First Citizen:", "MENENIUS:"]

    def run(prompt: str) -> str:
        stream = client(server).completions.create(
            model="x", prompt=prompt, max_tokens=40, temperature=0, stream=True
        )
        return "".join(ch.choices[0].text for ch in stream)

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(run, prompts, timeout=60))
    for prompt, text in zip(prompts, texts, strict=False):
        assert text == engine.generate(prompt, max_new_tokens=40, temperature=0).text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x" * 400}]}, "messages"),
    ],
)
def test_invalid_requests_get_openai_errors(server, body, param):
    request = {"model": "x", "messages": [{"role": "user", "content": "hi"}], **body}
    r = httpx.post(server + "/v1/chat/completions", json=request, timeout=TIMEOUT)
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


def test_openai_client_raises_bad_request(server):
    with pytest.raises(openai.BadRequestError) as info:
        client(server).completions.create(model="x", prompt="hi", temperature=-1)
    assert info.value.status_code == 400 and "temperature" in str(info.value)
    r = httpx.post(
        server + "/v1/completions",
        content=b"{not json",
        timeout=TIMEOUT,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_invalid"
    r = httpx.post(server + "/v1/completions", json={"prompt": [1, 2, 999]}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_models_health_tokenize_detokenize_metrics(server, engine):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["smallmind-shakespeare-byte"]
    assert httpx.get(server + "/health", timeout=TIMEOUT).json() == {"status": "ok"}
    ids = httpx.post(server + "/tokenize", json={"content": "Hello"}, timeout=TIMEOUT).json()["tokens"]
    assert ids == engine.tokenizer.encode("Hello")
    text = httpx.post(server + "/detokenize", json={"tokens": ids}, timeout=TIMEOUT).json()["content"]
    assert text == engine.tokenizer.decode(ids)
    assert httpx.post(server + "/detokenize", json={"tokens": [-1]}, timeout=TIMEOUT).status_code == 400
    before = metric(server, "smallmind_tokens_generated_total")
    client(server).completions.create(model="x", prompt="ROMEO:", max_tokens=7, temperature=0)
    assert metric(server, "smallmind_tokens_generated_total") == before + 7
    text = httpx.get(server + "/metrics", timeout=TIMEOUT).text
    for name in (
        "smallmind_requests_running",
        "smallmind_requests_waiting",
        "smallmind_prompt_tokens_total",
        "smallmind_time_to_first_token_seconds_bucket",
        "smallmind_batch_size_bucket",
    ):
        assert name in text


def test_api_key_is_required_except_for_health(engine):
    with running(create_app(engine, parallel=1, api_key="s3cret")) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, key="wrong").models.list()
        r = httpx.post(url + "/v1/completions", json={"prompt": "a"}, timeout=TIMEOUT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/metrics", timeout=TIMEOUT).status_code == 401
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200
        reply = client(url, key="s3cret").completions.create(model="x", prompt="a", max_tokens=3)
        assert reply.usage.completion_tokens == 3


def test_body_size_limit(engine):
    with running(create_app(engine, parallel=1, max_body_bytes=2000)) as url:
        r = httpx.post(url + "/v1/completions", json={"prompt": "x" * 5000}, timeout=TIMEOUT)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert (
            httpx.post(
                url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=TIMEOUT
            ).status_code
            == 200
        )


def test_queue_full_gets_503_with_retry_after(engine):
    app = create_app(engine, parallel=1, max_queue=1)
    slow_steps(app, 0.02)
    with running(app) as url:
        body = {"prompt": "ROMEO:", "max_tokens": 150, "stream": True}
        with httpx.Client(timeout=TIMEOUT) as http, concurrent.futures.ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(lambda: http.post(url + "/v1/completions", json=body)) for _ in range(2)]
            deadline = time.monotonic() + 10
            while metric(url, "smallmind_requests_waiting") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            r = http.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
            with pytest.raises(openai.InternalServerError):
                client(url).completions.create(model="x", prompt="hi", max_tokens=2)
            assert all(f.result(timeout=60).status_code == 200 for f in busy)


def test_a_disconnected_stream_is_cancelled_and_its_slot_freed(engine):
    app = create_app(engine, parallel=1)
    slow_steps(app, 0.02)
    with running(app) as url:
        body = {"prompt": "ROMEO:", "max_tokens": 200, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        deadline = time.monotonic() + 10
        while (
            metric(
                url,
                "smallmind_requests_total",
            )
            < 1
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
        assert 'smallmind_requests_total{finish_reason="cancelled"} 1.0' in text
        assert metric(url, "smallmind_requests_running") == 0
        assert metric(url, "smallmind_tokens_generated_total") < 100
        reply = client(url).completions.create(model="x", prompt="KING:", max_tokens=3)  # the slot is free
        assert reply.usage.completion_tokens == 3


def test_a_client_that_gives_up_on_a_plain_request_is_cancelled(engine):
    app = create_app(engine, parallel=1)
    slow_steps(app, 0.02)
    with running(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                url + "/v1/completions",
                json={"prompt": "ROMEO:", "max_tokens": 200},
                timeout=httpx.Timeout(30.0, read=0.3),
            )
        deadline = time.monotonic() + 10
        while metric(url, "smallmind_requests_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'finish_reason="cancelled"} 1.0' in httpx.get(url + "/metrics", timeout=TIMEOUT).text


def test_time_limit(engine):
    app = create_app(engine, parallel=1, timeout=0.5, queue_timeout=0.2)
    slow_steps(app, 0.01)
    with running(app) as url:
        body = {"prompt": "ROMEO:", "max_tokens": 240}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=TIMEOUT)
            time.sleep(0.1)
            second = pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=TIMEOUT)
            r1, r2 = first.result(timeout=30), second.result(timeout=30)
        assert r1.status_code == 200
        choice = r1.json()["choices"][0]
        assert choice["finish_reason"] == "length" and 0 < r1.json()["usage"]["completion_tokens"] < 240
        assert r2.status_code == 503 and r2.json()["error"]["code"] == "timeout"


def test_shutdown_ends_the_engine_thread(engine):
    app = create_app(engine, parallel=1)
    with running(app) as url:
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200
    assert not app.state.scheduler.alive
    assert threading.active_count() < 50


def test_prompt_batches_and_streamed_choices_keep_their_index(server, engine):
    prompts = ["ROMEO:", "KING:"]
    reply = client(server).completions.create(model="x", prompt=prompts, max_tokens=10, temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    expected = [engine.generate(p, max_new_tokens=10, temperature=0).text for p in prompts for _ in range(2)]
    assert [c.text for c in reply.choices] == expected
    assert reply.usage.prompt_tokens == sum(len(engine.tokenizer.encode(p)) for p in prompts)
    stream = client(server).chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=10,
        temperature=0.8,
        seed=1,
        n=2,
        stream=True,
    )
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(texts) and texts[0] != texts[1]


def test_many_clients_with_random_disconnects_leave_nothing_behind(engine):
    import random

    app = create_app(engine, parallel=4, max_queue=64)
    with running(app) as url:

        def client_loop(k: int) -> list[int]:
            rng = random.Random(k)
            lengths = []
            with httpx.Client(timeout=TIMEOUT) as http:
                for i in range(3):
                    body = {
                        "prompt": "ROMEO:",
                        "max_tokens": 30,
                        "temperature": 0.8,
                        "seed": k * 10 + i,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    }
                    quit_after = rng.choice([1, 3, None])
                    with http.stream("POST", url + "/v1/completions", json=body) as r:
                        assert r.status_code == 200
                        seen = 0
                        for line in r.iter_lines():
                            seen += line.startswith("data: ")
                            if quit_after is not None and seen >= quit_after:
                                break
                            if line.startswith("data: {") and '"usage":{' in line:
                                lengths.append(json.loads(line[6:])["usage"]["completion_tokens"])
            return lengths

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            finished = [n for lengths in pool.map(client_loop, range(12), timeout=120) for n in lengths]
        assert finished and all(n == 30 for n in finished)
        deadline = time.monotonic() + 10
        while metric(url, "smallmind_requests_running") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(url, "smallmind_requests_running") == 0
        assert metric(url, "smallmind_requests_waiting") == 0
        assert app.state.scheduler.alive
        assert len(app.state.scheduler._slots) <= 4


def test_response_format_json_schema_and_json_object(server):
    pytest.importorskip("llguidance", reason="the structured extra is not installed")
    schema = {"type": "object", "properties": {"mood": {"enum": ["glad", "sad"]},
                                               "n": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["mood", "n"], "additionalProperties": False}
    api = client(server)
    r = api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "How are you?"}], max_tokens=60, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "mood", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"mood", "n"} and value["mood"] in ("glad", "sad") and 1 <= value["n"] <= 9
    assert r.choices[0].finish_reason == "stop"
    r = api.completions.create(model="m", prompt="ROMEO:", max_tokens=60, seed=1,
                               extra_body={"response_format": {"type": "json_object"}})
    text = r.choices[0].text
    assert r.choices[0].finish_reason != "stop" or isinstance(json.loads(text), dict)
    assert text.startswith("{")
    with pytest.raises(openai.BadRequestError) as err:  # a keyword that cannot be enforced
        api.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=5,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    assert err.value.body["param"] == "response_format"


def test_echo_starts_each_completion_with_its_prompt(server, engine):
    api = client(server)
    solo = engine.generate("KING:", max_new_tokens=6, temperature=0).text
    r = api.completions.create(model="m", prompt=["KING:", "ROMEO:"], max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == "KING:" + solo and r.choices[1].text.startswith("ROMEO:")
    stream = api.completions.create(model="m", prompt="KING:", max_tokens=6, temperature=0, echo=True,
                                    stream=True)
    assert "".join(ch.choices[0].text for ch in stream) == "KING:" + solo
    ids = engine.tokenizer.encode("KING:")
    r = api.completions.create(model="m", prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == engine.tokenizer.decode(ids) + solo
    with pytest.raises(openai.BadRequestError) as err:  # the prompt's own logprobs are not computed
        api.completions.create(model="m", prompt="KING:", max_tokens=2, echo=True, logprobs=1)
    assert err.value.body["param"] == "echo"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools.0.function"),
])
def test_a_bad_union_field_is_named_without_pydantics_branch_names(server, body, param):
    r = httpx.post(server + "/v1/chat/completions", json={"model": "x", **body}, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_conversation_the_chat_template_refuses_is_400():
    engine = Engine.default()
    engine.chat_template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with "
                            "user') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with running(create_app(engine, parallel=1)) as url:
        r = httpx.post(url + "/v1/chat/completions", timeout=TIMEOUT,
                       json={"messages": [{"role": "assistant", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert "roles must start with user" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/chat/completions", timeout=TIMEOUT,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200
