"""Chat: render a conversation with the model's own template; an interactive REPL."""
from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, cast

from .errors import SmallMindError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, Session, TokenStream

CHATML_END = "<|im_end|>"


def render_chatml(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The ChatML format, used when the model carries no template (or jinja2 is missing)."""
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _check_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")


def render_chat(engine: "Engine", messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> str:
    """The prompt text for ``messages`` in the model's chat template (Jinja, via the optional
    ``jinja2`` dependency), falling back to ChatML."""
    _check_messages(messages)
    template = engine.chat_template
    if template:
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:  # the `chat` extra is not installed
            template = None
    if not template:
        return render_chatml(messages, add_generation_prompt)

    def raise_exception(message):
        raise SmallMindError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    tok = engine.tokenizer
    assert tok is not None  # a template renders for a model with a tokenizer
    piece = (lambda i: tok.token_bytes(i).decode("utf-8", "replace") if i is not None else "")
    special = getattr(tok, "token_text", None)
    bos = special(tok.bos_id) if special and tok.bos_id is not None else piece(tok.bos_id)
    eos = special(tok.eos_id) if special and tok.eos_id is not None else piece(tok.eos_id)
    extra = {"tools": tools} if tools else {}  # templates test `tools is defined`
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt, **extra)


def encode_chat(engine: "Engine", messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of the rendered conversation, ready for the assistant's answer.

    Special-token text in the template becomes its token; BOS is added unless the template
    already wrote it (Gemma's does), so a conversation never starts with two BOS tokens.
    """
    tok = engine.tokenizer
    if tok is None:
        raise SmallMindError("chat needs a model with a tokenizer")
    prompt = render_chat(engine, messages, add_generation_prompt=True, tools=tools)
    ids = tok.encode(prompt, add_special=False, parse_special=True)
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


def chat_stop_strings(engine: "Engine") -> list[str]:
    return [CHATML_END] if not engine.chat_template or CHATML_END in engine.chat_template else []


class ChatREPL:
    """``smallmind chat``: read a line, answer it, keep the KV cache across turns.

    Each turn renders the whole conversation and runs only the tokens past the longest
    prefix already in the session's cache, so earlier turns are never recomputed.
    """

    def __init__(self, engine: "Engine", *, system: str | None = None, sampling: dict | None = None,
                 stdin=None, stdout=None):
        self.engine = engine
        self.session: "Session" = engine.session()
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.sampling = dict(sampling or {})
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    def turn(self, user_text: str) -> str:
        """Answer one user message, streaming it to stdout; returns the answer."""
        self.messages.append({"role": "user", "content": user_text})
        ids = encode_chat(self.engine, self.messages)
        new_ids = self.session.continue_with(ids)
        sampling = dict(self.sampling)
        sampling["stop"] = list(sampling.get("stop") or []) + chat_stop_strings(self.engine)
        answer = []
        stream = cast("TokenStream", self.session.generate(new_ids, stream=True, **sampling))
        for chunk in stream:
            answer.append(chunk.text)
            self.stdout.write(chunk.text)
            self.stdout.flush()
        self.stdout.write("\n")
        text = "".join(answer).strip()
        self.messages.append({"role": "assistant", "content": text})
        return text

    def run(self) -> int:
        out = self.stdout
        out.write("smallmind chat - empty line or Ctrl-D to quit\n")
        while True:
            out.write("> ")
            out.flush()
            line = self.stdin.readline()
            if not line or not line.strip():
                return 0
            self.turn(line.rstrip("\n"))
