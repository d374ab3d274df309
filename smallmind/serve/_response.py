"""The OpenAI objects of one API request, assembled from the scheduler's events: the whole
response, or its stream chunks; with the tool calls a reply makes and each token's logprobs."""

from __future__ import annotations

import json
import re
import time
import uuid
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from ._backend import Emitted
from ._logprobs import LogprobTexts, TokenLogprob, chat_logprobs, completion_logprobs
from ._protocol import ApiError, ChatCompletionRequest, CompletionRequest
from .scheduler import Event, Failed, Finished

if TYPE_CHECKING:  # pragma: no cover
    from ..structured.tools import ToolPlan

__all__ = ["Body", "Run", "sse_data"]

Body = ChatCompletionRequest | CompletionRequest

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one per json.dumps call
_MARK = "\x00"  # stands for a chunk's text in the template of a text chunk


def sse_data(obj: dict[str, Any]) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return f"data: {_JSON.encode(obj)}\n\n"

# A call reply is {"name": ..., "arguments": {...}} (the schema lists name first, and the
# grammar keeps that order): once its head is there, the rest up to the last "}" is arguments.
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')


class _CallStream:
    """Turns one choice's streamed reply text into chat deltas: plain ``content`` for a text
    reply, or OpenAI ``tool_calls`` deltas (id, type and name first, then pieces of the
    arguments) for a call, which is told apart by its first character, ``{``."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.text = ""
        self.kind: str | None = "text" if plan.mode == "none" else None  # "text" | "call"
        self.call_id = ""
        self.args_from = -1  # where the arguments start in ``text``, once the head is seen
        self.sent = 0

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        if self.kind is None:
            head = self.text.lstrip()
            if not head:
                return []
            self.kind = "call" if head.startswith("{") else "text"
            if self.kind == "text":
                return [{"content": self.text}]
        if self.kind == "text":
            return [{"content": piece}] if piece else []
        deltas = self._head()
        if self.args_from >= 0:
            body = self.text.rstrip()
            end = len(body) - 1 if body.endswith("}") else len(body)  # may be the call's own "}"
            deltas += self._arguments(end)
        return deltas

    def _head(self) -> list[dict[str, Any]]:
        if self.args_from >= 0:
            return []
        m = _CALL_HEAD.match(self.text)
        if m is None:
            return []
        self.args_from = self.sent = m.end()
        self.call_id = "call_" + uuid.uuid4().hex[:24]
        call = {"index": 0, "id": self.call_id, "type": "function",
                "function": {"name": m.group(1), "arguments": ""}}
        return [{"tool_calls": [call]}]

    def _arguments(self, end: int) -> list[dict[str, Any]]:
        if end <= self.sent:
            return []
        piece, self.sent = self.text[self.sent:end], end
        return [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}]

    def finish(self, reason: str) -> tuple[list[dict[str, Any]], str]:
        """The last deltas and the finish reason ("tool_calls" for a complete call)."""
        if self.kind != "call":
            return [], reason
        if self.args_from < 0:  # the head never matched (never seen: the grammar orders it)
            calls = self.plan.calls(self.text) if reason == "stop" else None
            if not calls:
                return [], reason
            return [{"tool_calls": [{"index": 0, **calls[0]}]}], "tool_calls"
        body = self.text.rstrip()
        deltas = self._arguments(len(body) - 1 if reason == "stop" else len(body))
        return deltas, "tool_calls" if reason == "stop" else reason


class Run:
    """The choices of one API request as their events arrive, and the OpenAI objects made of them."""

    def __init__(self, body: Body, model_id: str, n_choices: int, prompt_lengths: list[int],
                 plan: ToolPlan | None = None, texts: LogprobTexts | None = None,
                 echo: list[str] | None = None):
        self.chat = isinstance(body, ChatCompletionRequest)
        self.include_usage = body.include_usage()
        self.model_id = model_id
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.object = "chat.completion" if self.chat else "text_completion"
        self.created = int(time.time())
        self.texts: list[list[str]] = [[] for _ in range(n_choices)]
        self.echo = echo  # completions' echo: each choice's text starts with its prompt
        self.finish: list[Finished | None] = [None] * n_choices
        self.failed: list[Failed] = []
        self.n_per_prompt = body.n
        self.prompt_lengths = prompt_lengths
        self.left = n_choices
        self.plan = plan if plan is not None and plan.mode != "none" else None
        self.calls = [_CallStream(self.plan) for _ in range(n_choices)] if self.plan else None
        self.token_texts = texts  # set when logprobs are asked for
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n_choices)]
        self.unsent = [0] * n_choices  # logprobs not yet in a stream chunk
        self.offsets = [0] * n_choices  # characters of the tokens already in a chunk (text_offset)
        # A plain text chunk (no logprobs, no tool call) is its choice's serialised template
        # around the text's JSON string: all a streamed token costs.
        self.templates: list[tuple[str, str] | None] | None = (
            [None] * n_choices if self.calls is None and texts is None else None)

    @property
    def done(self) -> bool:
        return self.left == 0

    def sse(self, index: int, event: Event) -> str:
        """Record ``event``; returns the server-sent events of the stream chunks it makes."""
        templates = self.templates
        if templates is None or not isinstance(event, Emitted):
            return "".join([sse_data(chunk) for chunk in self.add(index, event)])
        self.texts[index].append(event.text)
        if not event.text:
            return ""
        template = templates[index]
        if template is None:
            chunk = self._chunk(index, self._text_delta(_MARK), None)
            head, _, tail = sse_data(chunk).rpartition(encode_basestring(_MARK))
            template = templates[index] = head, tail
        return template[0] + encode_basestring(event.text) + template[1]

    def add(self, index: int, event: Event) -> list[dict[str, Any]]:
        """Record ``event``; returns the stream chunks it makes."""
        if isinstance(event, Emitted):
            self.texts[index].append(event.text)
            if event.logprob is not None:
                self.logprobs[index].append(event.logprob)
            if self.calls is not None:
                return [self._chunk(index, d, None) for d in self.calls[index].feed(event.text)]
            if not event.text:
                return []
            return [self._chunk(index, self._text_delta(event.text), None)]
        self.left -= 1
        if isinstance(event, Failed):
            self.failed.append(event)
            return []
        self.finish[index] = event
        if event.finish_reason not in ("stop", "length"):
            return []
        reason = event.finish_reason
        deltas: list[dict[str, Any]] = []
        if self.calls is not None:
            deltas, reason = self.calls[index].finish(reason)
        chunks = [self._chunk(index, d, None) for d in deltas]
        return [*chunks, self._chunk(index, {} if self.chat else {"text": ""}, reason)]

    def _text_delta(self, text: str) -> dict[str, Any]:
        return {"content": text} if self.chat else {"text": text}

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason,
                                  "logprobs": self._unsent_logprobs(index)}
        if self.chat:
            choice["delta"] = delta
        else:
            choice.update(delta)
        chunk = {
            "id": self.id,
            "object": self.object + (".chunk" if self.chat else ""),
            "created": self.created,
            "model": self.model_id,
            "choices": [choice],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _unsent_logprobs(self, index: int) -> dict[str, Any] | None:
        if self.token_texts is None:
            return None
        entries = self.logprobs[index][self.unsent[index]:]
        self.unsent[index] = len(self.logprobs[index])
        if not entries:
            return None
        return self._logprobs(index, entries, self.offsets[index])

    def _logprobs(self, index: int, entries: list[TokenLogprob], offset: int) -> dict[str, Any] | None:
        texts = self.token_texts
        if texts is None:
            return None
        if self.chat:
            return chat_logprobs(entries, texts)
        out = completion_logprobs(entries, texts, offset)
        self.offsets[index] = offset + sum(len(t) for t in out["tokens"])
        return out

    def opening_chunks(self) -> list[dict[str, Any]]:
        if not self.chat:
            return [self._chunk(i, {"text": e}, None) for i, e in enumerate(self.echo or []) if e]
        return [self._chunk(i, {"role": "assistant", "content": ""}, None) for i in range(len(self.texts))]

    def failure(self) -> ApiError | None:
        if self.failed:
            err = self.failed[0].error
            return ApiError(500, f"generation failed: {type(err).__name__}: {err}", type="server_error")
        reasons = {f.finish_reason for f in self.finish if f is not None}
        if "timeout" in reasons:
            return ApiError(
                503,
                "the request waited longer than the server's time limit for a slot",
                type="server_busy",
                code="timeout",
                headers={"Retry-After": "1"},
            )
        if "cancelled" in reasons:
            return ApiError(
                503,
                "the request was cancelled (the server is shutting down)",
                type="server_error",
                code="cancelled",
            )
        return None

    def raise_failure(self) -> None:
        failure = self.failure()
        if failure is not None:
            raise failure

    def usage(self) -> dict[str, Any]:
        prompt = sum(self.prompt_lengths[:: self.n_per_prompt])
        completion = sum(f.completion_tokens for f in self.finish if f is not None)
        cached = sum(f.cached_tokens for f in self.finish if f is not None)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object + (".chunk" if self.chat else ""),
            "created": self.created,
            "model": self.model_id,
            "choices": [],
            "usage": self.usage(),
        }

    def _message(self, text: str, reason: str) -> tuple[dict[str, Any], str]:
        calls = None
        if self.plan is not None and reason == "stop":
            try:
                calls = self.plan.calls(text)
            except (ValueError, KeyError, TypeError):  # cut by a stop string: not a call after all
                calls = None
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, reason

    def response(self) -> dict[str, Any]:
        choices = []
        for i, parts in enumerate(self.texts):
            finished = self.finish[i]
            reason = finished.finish_reason if finished is not None else "stop"
            text = (self.echo[i] if self.echo else "") + "".join(parts)
            logprobs = self._logprobs(i, self.logprobs[i], 0)
            if self.chat:
                message, reason = self._message(text, reason)
                choices.append(
                    {"index": i, "message": message, "finish_reason": reason, "logprobs": logprobs}
                )
            else:
                choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs})
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
            "usage": self.usage(),
        }
