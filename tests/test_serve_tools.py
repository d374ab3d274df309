"""Tool calls and logprobs through the OpenAI-compatible server, driven by the official ``openai``
client and raw ``httpx`` SSE: the reply is held to a call of one of the tools (arguments valid
for its schema), and each token's logprob is the log-softmax of the model's raw logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from conftest import cached_model
from serve_utils import running

from smallmind import Engine
from smallmind.serve import create_app
from smallmind.serve._logprobs import token_logprob

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20},
                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.default()


@pytest.fixture(scope="module")
def server(engine):
    with running(create_app(engine, parallel=2)) as url:
        yield url


@pytest.fixture(scope="module")
def smol() -> Engine:
    """A chat model with room for the tools' description (the embedded model's context is 256)."""
    return Engine.load(cached_model("SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=1024)


@pytest.fixture(scope="module")
def tool_server(smol):
    pytest.importorskip("llguidance", reason="the structured extra is not installed")
    with running(create_app(smol, parallel=2)) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60.0)


def sse(url: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=60.0) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def valid_weather(arguments: str) -> dict:
    args = json.loads(arguments)
    assert set(args) == {"city", "days"}
    assert isinstance(args["city"], str) and len(args["city"]) <= 20
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    return args


# -- tools --------------------------------------------------------------------------------------
def test_required_tool_call_comes_back_as_openai_tool_calls(tool_server):
    r = client(tool_server).chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    valid_weather(call.function.arguments)


def test_named_tool_choice_picks_that_tool(tool_server):
    for seed in range(3):
        r = client(tool_server).chat.completions.create(
            model="m", messages=ASK, tools=[WEATHER, TIME], max_tokens=60, seed=seed, temperature=1.0,
            tool_choice={"type": "function", "function": {"name": "get_time"}})
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_time"
        assert json.loads(call.function.arguments)["zone"] in ("UTC", "CET")


def test_tool_choice_none_and_auto_answer_text_or_a_valid_call(tool_server):
    api = client(tool_server)
    r = api.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="none",
                                    max_tokens=20, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    kinds = set()
    for seed in range(4):
        r = api.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], max_tokens=60,
                                        seed=seed, temperature=1.0)
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            valid_weather(choice.message.tool_calls[0].function.arguments)
            kinds.add("call")
        else:
            assert not choice.message.content.lstrip().startswith("{")
            kinds.add("text")
    assert kinds  # either is allowed under "auto"; both are checked when they come


def test_streamed_tool_call_deltas_join_to_the_call(tool_server):
    body = {"model": "m", "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
            "max_tokens": 80, "seed": 1}
    events = sse(tool_server, "/v1/chat/completions", body)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    calls = [c for d in deltas for c in d.get("tool_calls") or []]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert all(c["index"] == 0 for c in calls)
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    assert valid_weather(arguments) == json.loads(
        client(tool_server).chat.completions.create(**body).choices[0].message.tool_calls[0].function.arguments)
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"]] == [
        "tool_calls"]
    assert not any(d.get("content") for d in deltas)
    # the openai client's own stream parser reads the same
    stream = client(tool_server).chat.completions.create(stream=True, **{k: v for k, v in body.items()})
    pieces = [tc.function.arguments or "" for ch in stream for tc in ch.choices[0].delta.tool_calls or []]
    assert "".join(pieces) == arguments


def test_a_tool_conversation_renders_earlier_calls_and_results(tool_server):
    history = [*ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = client(tool_server).chat.completions.create(model="m", messages=history, tools=[WEATHER],
                                               tool_choice="none", max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 60  # the call and its result are in the prompt


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "array", "uniqueItems": True}}}], "tool_choice": "required"}, "tools"),
])
def test_bad_tools_are_400_naming_the_field(tool_server, body, param):
    r = httpx.post(tool_server + "/v1/chat/completions",
                   json={"model": "m", "messages": ASK, "max_tokens": 4, **body}, timeout=30.0)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]


def test_served_tool_call_is_the_engines(tool_server, smol):
    r = client(tool_server).chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME],
                                                    tool_choice="required", max_tokens=60, temperature=0)
    solo = smol.chat(ASK, tools=[WEATHER, TIME], tool_choice="required", max_new_tokens=60, temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == solo.tool_calls[0]["function"]["name"]
    assert json.loads(call.function.arguments) == json.loads(solo.tool_calls[0]["function"]["arguments"])


# -- logprobs -----------------------------------------------------------------------------------
def direct_logprobs(engine: Engine, prompt: list[int], tokens: list[int]) -> list[float]:
    """Each token's log-softmax under ``engine.logits`` of everything before it (float64)."""
    logits = engine.logits(prompt + tokens[:-1]).astype(np.float64)[len(prompt) - 1:]
    peak = logits.max(axis=1, keepdims=True)
    lse = (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))[:, 0]
    return [float(logits[i, t] - lse[i]) for i, t in enumerate(tokens)]


def test_completion_logprobs_match_the_models_logits_for_greedy(server, engine):
    r = httpx.post(server + "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0,
                                                     "logprobs": 5}, timeout=30.0).json()
    lp = r["choices"][0]["logprobs"]
    solo = engine.generate("ROMEO:", max_new_tokens=12, temperature=0)
    assert "".join(lp["tokens"]) == r["choices"][0]["text"] == solo.text
    assert lp["token_logprobs"] == pytest.approx(direct_logprobs(engine, solo.prompt_tokens, solo.tokens),
                                                 abs=1e-4)
    for chosen, token, top in zip(lp["token_logprobs"], lp["tokens"], lp["top_logprobs"], strict=True):
        assert len(top) == 5 or len(set(top)) < 5  # distinct strings (tokens may share one)
        assert max(top.values()) == pytest.approx(chosen, abs=1e-6)  # greedy: the most likely
        assert top[token] == pytest.approx(chosen, abs=1e-6)
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-6
        assert all(v <= 0 for v in top.values())
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(12)]


def test_chat_logprobs_with_the_openai_client_and_streaming(server, engine):
    api = client(server)
    kwargs = {"model": "m", "messages": [{"role": "user", "content": "Speak."}], "max_tokens": 10,
              "temperature": 0, "logprobs": True, "top_logprobs": 3}
    r = api.chat.completions.create(**kwargs)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(c.token for c in content).startswith(r.choices[0].message.content)
    for c in content:
        assert bytes(c.bytes).decode("utf-8", "backslashreplace") == c.token
        assert len(c.top_logprobs) == 3
        assert [t.logprob for t in c.top_logprobs] == sorted((t.logprob for t in c.top_logprobs), reverse=True)
        assert c.top_logprobs[0].token == c.token and c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert sum(math.exp(t.logprob) for t in c.top_logprobs) <= 1.0 + 1e-6
    streamed = [c for ch in api.chat.completions.create(stream=True, **kwargs)
                if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [(c.token, round(c.logprob, 5)) for c in streamed] == [(c.token, round(c.logprob, 5)) for c in content]
    plain = api.chat.completions.create(**{**kwargs, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_sampled_logprobs_are_the_raw_distribution_not_the_sampling_one(server, engine):
    body = {"prompt": "KING:", "max_tokens": 8, "temperature": 0.5, "seed": 3, "logprobs": 2,
            "logit_bias": {"101": 5}}
    r = httpx.post(server + "/v1/completions", json=body, timeout=30.0).json()
    solo = engine.generate("KING:", max_new_tokens=8, temperature=0.5, seed=3, logit_bias={101: 5})
    assert r["choices"][0]["text"] == solo.text
    got = r["choices"][0]["logprobs"]["token_logprobs"]
    assert got == pytest.approx(direct_logprobs(engine, solo.prompt_tokens, solo.tokens), abs=1e-4)


def test_logprobs_under_a_grammar_are_the_unmasked_distribution(server, engine):
    pytest.importorskip("llguidance", reason="the structured extra is not installed")
    body = {"prompt": "ROMEO:", "max_tokens": 10, "temperature": 0, "logprobs": 1,
            "response_format": {"type": "json_object"}}
    r = httpx.post(server + "/v1/completions", json=body, timeout=30.0).json()
    solo = engine.generate("ROMEO:", max_new_tokens=10, temperature=0, json_schema={"type": "object"})
    assert r["choices"][0]["text"] == solo.text
    got = r["choices"][0]["logprobs"]["token_logprobs"]
    # The mask would make every probability larger (the forbidden tokens' share removed).
    assert got == pytest.approx(direct_logprobs(engine, solo.prompt_tokens, solo.tokens), abs=1e-4)


def test_logprob_values_and_ranges():
    row = np.array([1.0, 3.0, 3.0, -np.inf, 0.5], dtype=np.float32)
    e = token_logprob(row, 0, 3)
    total = math.log(sum(math.exp(v) for v in (1.0, 3.0, 3.0, 0.5)))
    assert e.logprob == pytest.approx(1.0 - total)
    assert [t for t, _ in e.top] == [1, 2, 0]  # ties by the lower id
    assert token_logprob(row, 3, 0).logprob == -math.inf and token_logprob(row, 3, 0).top == ()
    with pytest.raises(ValueError):
        token_logprob(np.full(4, np.nan, np.float32), 0, 1)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
])
def test_bad_logprobs_are_400(server, path, body, param):
    base = {"messages": ASK} if "chat" in path else {"prompt": "hi"}
    r = httpx.post(server + path, json={**base, "max_tokens": 2, **body}, timeout=30.0)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


@pytest.mark.parametrize("reply", [
    '{"name": "get_weather", "arguments": {"city": "Paris}", "days": 3}}',
    '{ "name":"get_weather" ,"arguments" : {"city": "a", "days": 1} }\n',
    '{"name": "get_weather", "arguments": {"city": "}}", "days": 7}}',
])
def test_call_stream_splits_any_piecing_into_head_and_arguments(reply):
    from smallmind.serve._response import _CallStream
    from smallmind.structured.tools import ToolPlan

    plan = ToolPlan(None, ASK, [WEATHER], "required", {})
    for size in (1, 3, len(reply)):
        stream = _CallStream(plan)
        deltas = [d for i in range(0, len(reply), size) for d in stream.feed(reply[i:i + size])]
        last, reason = stream.finish("stop")
        calls = [c for d in deltas + last for c in d["tool_calls"]]
        assert reason == "tool_calls" and calls[0]["function"]["name"] == "get_weather"
        arguments = "".join(c["function"]["arguments"] for c in calls)
        assert json.loads(arguments) == json.loads(reply)["arguments"]
    text = _CallStream(ToolPlan(None, ASK, [WEATHER], "auto", {}))
    assert text.feed("  ") == [] and text.feed("Hi") == [{"content": "  Hi"}] and text.finish("stop") == ([], "stop")
