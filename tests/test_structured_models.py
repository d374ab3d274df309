"""Structured output with a real vocabulary: every schema of structured_schemas.py on
SmolLM2-135M-Instruct (49k byte-level BPE tokens) must give JSON that parses and validates,
and chat tool calls must name a tool and carry arguments valid for its parameters."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import uuid

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from conftest import cached_model
from structured_schemas import SCHEMAS

from smallmind import Engine

#: Format checks that do not depend on jsonschema's optional format packages.
_FORMATS = {
    "date": dt.date.fromisoformat,
    "date-time": lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")),
    "time": lambda s: dt.time.fromisoformat(s.replace("Z", "+00:00")),
    "uuid": uuid.UUID,
    "ipv4": ipaddress.IPv4Address,
    "email": lambda s: s.index("@") > 0 or None,
}


def check_formats(value, schema) -> None:
    """Walk value with schema's plain (non-$ref) subschemas and check each string format."""
    if isinstance(value, str) and "format" in schema:
        _FORMATS[schema["format"]](value)
    if isinstance(value, dict):
        for key, item in value.items():
            check_formats(item, schema.get("properties", {}).get(key, {}))
    if isinstance(value, list):
        for item in value:
            check_formats(item, schema.get("items", {}) if isinstance(schema.get("items"), dict) else {})


@pytest.fixture(scope="module")
def smol() -> Engine:
    return Engine.load(cached_model("SmolLM2-135M-Instruct.Q4_1.gguf"), n_threads=2)


@pytest.mark.parametrize("name,schema", SCHEMAS, ids=[n for n, _ in SCHEMAS])
def test_schema_output_parses_and_validates(smol, name, schema):
    messages = [{"role": "user", "content": f"Give an example {name.replace('_', ' ')} as JSON "
                                            f"matching this schema: {json.dumps(schema)}"}]
    r = smol.chat(messages, json_schema=schema, max_new_tokens=200, temperature=0.7, seed=len(name))
    assert r.finish_reason == "stop", (r.finish_reason, r.text)
    assert r.json == json.loads(r.text)
    validator = jsonschema.Draft202012Validator
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(r.json)
    check_formats(r.json, schema)


def test_regex_and_lark_with_a_bpe_vocabulary(smol):
    phone = r"\(\d{3}\) \d{3}-\d{4}"
    r = smol.chat([{"role": "user", "content": "Write a US phone number."}], regex=phone, max_new_tokens=30, seed=0)
    assert r.finish_reason == "stop"
    assert re.fullmatch(phone, r.text), r.text
    lark = """start: item (", " item)? (", " item)? "."
item: NUMBER " " FRUIT
NUMBER: /[1-9]/
FRUIT: "apples" | "pears" | "plums"
"""
    r = smol.chat([{"role": "user", "content": "List some fruit you bought."}], grammar=lark, max_new_tokens=40, seed=1)
    assert r.finish_reason == "stop"
    assert re.fullmatch(r"[1-9] (apples|pears|plums)(, [1-9] (apples|pears|plums)){0,2}\.", r.text), r.text
    r = smol.chat([{"role": "user", "content": "Is the sky blue? Answer yes or no."}], choices=["yes", "no"], seed=0)
    assert r.text in ("yes", "no") and r.finish_reason == "stop"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_chat_tool_calls(smol, choice):
    tools = [WEATHER, ADD]
    r = smol.chat([{"role": "user", "content": "What is 17 plus 25?"}], tools=tools, tool_choice=choice,
                  max_new_tokens=80, temperature=0.5, seed=0)
    assert r.finish_reason == "stop" and r.tool_calls is not None and len(r.tool_calls) == 1
    call = r.tool_calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    name = call["function"]["name"]
    assert name in ("get_weather", "add") and (choice == "required" or name == "add")
    params = {"get_weather": WEATHER, "add": ADD}[name]["function"]["parameters"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), params)
    # The follow-up turn, with the call and its result in the history, renders and runs.
    history = [{"role": "user", "content": "What is 17 plus 25?"},
               {"role": "assistant", "content": None, "tool_calls": r.tool_calls},
               {"role": "tool", "tool_call_id": call["id"], "content": "42"}]
    follow = smol.chat(history, tools=tools, tool_choice="none", max_new_tokens=8, seed=0)
    assert follow.tool_calls is None


def test_chat_tool_choice_auto_streams_text_or_a_call(smol):
    stream = smol.chat([{"role": "user", "content": "Weather in Paris, in celsius?"}], tools=[WEATHER],
                       max_new_tokens=80, seed=0, stream=True)
    text = "".join(chunk.text for chunk in stream)
    result = stream.result
    assert result is not None and result.text == text
    if text.lstrip().startswith("{"):
        assert result.tool_calls and result.tool_calls[0]["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(result.tool_calls[0]["function"]["arguments"]),
                            WEATHER["function"]["parameters"])
    else:
        assert result.tool_calls is None


@pytest.mark.parametrize("tools,choice,message", [
    ([], None, "tools must be a non-empty list"),
    ([{"type": "function", "function": {"name": "bad name"}}], None, "must match"),
    ([WEATHER, WEATHER], None, "duplicate function name"),
    ([WEATHER], "sometimes", "tool_choice must be"),
    ([WEATHER], {"type": "function", "function": {"name": "add"}}, "not among the tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}], "required",
     "invalid json_schema"),
])
def test_tool_errors(smol, tools, choice, message):
    with pytest.raises(ValueError, match=message):
        smol.chat([{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice, max_new_tokens=4)


@pytest.mark.slow
def test_gemma3_vocabulary_json():
    """Gemma 3: a 262k-token SentencePiece vocabulary with byte fallback."""
    gemma = Engine.load(cached_model("gemma-3-270m-q4_k_m.gguf"), n_threads=2)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                               "city": {"enum": ["Paris", "Tokyo", "Lima"]}},
              "required": ["name", "age", "city"], "additionalProperties": False}
    r = gemma.chat([{"role": "user", "content": "Give me a JSON person with a name, age and city."}],
                   json_schema=schema, max_new_tokens=60, temperature=0.5, seed=0)
    assert r.finish_reason == "stop", r.text
    jsonschema.validate(r.json, schema)
