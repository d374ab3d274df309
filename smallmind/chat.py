"""Chat: render a conversation with the model's own template (the REPL is in ``_repl.py``)."""
from __future__ import annotations

import warnings
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from .errors import SmallMindError
from .tokenizers import Tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session


class ChatModel(Protocol):
    """What chat needs of an engine (an :class:`~smallmind.Engine` is one)."""

    tokenizer: Tokenizer | None
    chat_template: str | None
    n_ctx: int

    def session(self) -> Session: ...

CHATML_END = "<|im_end|>"


def render_chatml(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The ChatML format, used when the model carries no template (or jinja2 is missing)."""
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _check_messages(messages: list[dict[str, Any]]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")


def render_chat(messages: list[dict[str, Any]], tokenizer: Tokenizer | None, template: str | None,
                add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt text for ``messages`` in the model's chat ``template`` (Jinja, via the
    ``jinja2`` dependency), falling back to ChatML when there is none. ``tools`` (OpenAI
    function tools) reach the template only when given: templates test ``tools is defined``."""
    _check_messages(messages)
    if template:
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:  # a dependency, but an install can still lack it
            _fallback_warning("jinja2 is not installed")
            template = None
    if not template:
        return render_chatml(messages, add_generation_prompt)

    def raise_exception(message: object) -> NoReturn:
        raise SmallMindError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    tok = tokenizer
    if tok is None:
        raise SmallMindError("a chat template needs the model's tokenizer")
    def piece(i: int | None) -> str:
        return tok.token_bytes(i).decode("utf-8", "replace") if i is not None else ""

    special = getattr(tok, "token_text", None)
    bos = special(tok.bos_id) if special and tok.bos_id is not None else piece(tok.bos_id)
    eos = special(tok.eos_id) if special and tok.eos_id is not None else piece(tok.eos_id)
    extra = {"tools": tools} if tools else {}
    from jinja2 import TemplateError
    try:
        return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                                add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError as exc:  # raise_exception() above is the template refusing: not caught
        _fallback_warning(f"the model's chat template cannot be rendered ({exc})")
        return render_chatml(messages, add_generation_prompt)


def _fallback_warning(reason: str) -> None:
    # The same text from the same line is shown once per process (the default filter).
    warnings.warn(f"{reason}; using ChatML instead", RuntimeWarning, stacklevel=3)


def encode_chat(messages: list[dict[str, Any]], tokenizer: Tokenizer, template: str | None,
                tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of the rendered conversation, ready for the assistant's answer.

    Special-token text in the template becomes its token; BOS is added unless the template
    already wrote it (Gemma's does), so a conversation never starts with two BOS tokens.
    """
    tok = tokenizer
    prompt = render_chat(messages, tok, template, add_generation_prompt=True, tools=tools)
    ids = tok.encode(prompt, add_special=False, parse_special=True)
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


def chat_stop_strings(template: str | None) -> list[str]:
    """ChatML's end-of-turn text, for templates that use it (or none)."""
    return [CHATML_END] if not template or CHATML_END in template else []
