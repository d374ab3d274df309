"""Tool calls for ``Engine.chat(messages, tools=[...], tool_choice=...)``, the OpenAI way.

``tools`` are OpenAI function tools: ``{"type": "function", "function": {"name": ...,
"description": ..., "parameters": <JSON schema>}}``. A chat template that knows about tools
(it mentions ``tools``) renders them itself; for one that does not, the tools and the
reply format are described in the system message. The reply is then constrained to

    {"name": "<one tool's name>", "arguments": {... that tool's parameters ...}}

(``tool_choice="required"`` or a named function), or to either such a call or plain text
that does not start with ``{`` (``"auto"``, the default). ``"none"`` leaves the reply
unconstrained. A call comes back as ``result.tool_calls = [{"id": ..., "type": "function",
"function": {"name": ..., "arguments": "<JSON text>"}}]``.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..results import GenerationResult, TokenStream

__all__ = ["ToolPlan", "new_call_id", "plain_messages"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONSTRAINT_KEYS = ("json_schema", "regex", "grammar", "choices")
_INSTRUCTIONS = ("You can call the following tools. To call one, reply with only a JSON object "
                 '{{"name": <the tool\'s name>, "arguments": <an object matching its parameters>}}.'
                 "{extra}\n\nTools:\n{tools}")


def _functions(tools: Any) -> list[dict]:
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence) or not tools:
        raise ValueError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    out: list[dict] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(fn, Mapping):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                             f"'parameters': ...}}}}, got {tool!r}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"tools[{i}].function.name must match [A-Za-z0-9_-]{{1,64}}, got {name!r}")
        if any(f["name"] == name for f in out):
            raise ValueError(f"tools[{i}]: duplicate function name {name!r}")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise TypeError(f"tools[{i}].function.parameters must be a JSON schema object (dict)")
        out.append({"name": name, "description": str(fn.get("description", "")), "parameters": dict(params)})
    return out


def _chosen(functions: list[dict], tool_choice: Any) -> tuple[str, list[dict]]:
    """(mode, the functions a call may name): mode is "auto", "required" or "none"."""
    if tool_choice is None or tool_choice in ("auto", "required", "none"):
        return tool_choice or "auto", functions
    name = None
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
    if name is None:
        raise ValueError("tool_choice must be 'auto', 'required', 'none' or "
                         f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}")
    picked = [f for f in functions if f["name"] == name]
    if not picked:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools "
                         f"{[f['name'] for f in functions]}")
    return "required", picked


def call_schema(functions: list[dict]) -> dict:
    """The JSON schema of one call of any of ``functions``."""
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def _with_instructions(messages: list[dict], functions: list[dict], mode: str) -> list[dict]:
    extra = " Call a tool only when it helps; otherwise answer in plain text." if mode == "auto" else ""
    listing = "\n".join(json.dumps({"name": f["name"], "description": f["description"],
                                    "parameters": f["parameters"]}) for f in functions)
    text = _INSTRUCTIONS.format(extra=extra, tools=listing)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def plain_messages(messages: list[dict]) -> list[dict]:
    """Tool traffic as text, for templates that know nothing of tools: an assistant's calls
    become its content, a tool's result is a message of role "tool"."""
    out = []
    for m in messages:
        if not isinstance(m, Mapping):
            out.append(m)  # the template's own check names the bad entry
            continue
        calls = m.get("tool_calls")
        if calls:
            text = "\n".join(json.dumps({"name": c["function"]["name"],
                                         "arguments": json.loads(c["function"]["arguments"])})
                             for c in calls)
            m = {"role": m.get("role", "assistant"), "content": (m.get("content") or "") + text}
        elif m.get("content") is None and "role" in m:
            m = {**m, "content": ""}
        out.append(m)
    return out


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolPlan:
    """How one chat call with tools is rendered, constrained and read back."""

    def __init__(self, template: str | None, messages: list[dict], tools: Any, tool_choice: Any,
                 kwargs: Mapping[str, Any]):
        clash = [k for k in _CONSTRAINT_KEYS if kwargs.get(k) is not None]
        if clash:
            raise ValueError(f"chat(tools=...) constrains the reply itself; drop {clash}")
        functions = _functions(tools)
        self.mode, allowed = _chosen(functions, tool_choice)
        #: What the template's own ``tools`` variable gets (None: the template ignores tools).
        self.template_tools: list[dict] | None = None
        if template and "tools" in template:
            self.template_tools = [{"type": "function", "function": f} for f in functions]
            self.messages = messages
        elif self.mode == "none":
            self.messages = plain_messages(messages)
        else:
            self.messages = _with_instructions(plain_messages(messages), allowed, self.mode)
        #: Keyword arguments that constrain generate() to the reply format.
        self.constraint: dict[str, Any] = {}
        if self.mode == "required":
            self.constraint = {"json_schema": call_schema(allowed)}
        elif self.mode == "auto":
            schema = json.dumps(call_schema(allowed))
            self.constraint = {"grammar": (f"start: call | TEXT\ncall: %json {schema}\n"
                                           "TEXT: /[^{\\s][\\s\\S]*/\n")}

    def finish(self, result: GenerationResult) -> GenerationResult:
        """Fill ``result.tool_calls`` from a complete call reply."""
        if result.finish_reason != "stop":
            return result
        calls = self.calls(result.text)
        if calls is not None:
            result.json = json.loads(result.text)
            result.tool_calls = calls
        return result

    def calls(self, text: str) -> list[dict] | None:
        """The OpenAI ``tool_calls`` of a complete reply ``text``; None when it is plain text."""
        text = text.strip()
        if self.mode == "none" or not text.startswith("{"):
            return None
        call = json.loads(text)
        return [{"id": new_call_id(), "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]

    def stream(self, stream: TokenStream) -> TokenStream:
        """``stream`` whose final ``result`` carries the tool calls."""
        return _ToolStream(stream, self)  # type: ignore[return-value]


class _ToolStream:
    def __init__(self, inner: TokenStream, plan: ToolPlan):
        self._inner, self._plan = inner, plan
        self.result: GenerationResult | None = None

    def __iter__(self) -> _ToolStream:
        return self

    def close(self) -> None:
        self._inner.close()

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except StopIteration:
            if self.result is None and self._inner.result is not None:
                self.result = self._plan.finish(self._inner.result)
            raise
