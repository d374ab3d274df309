"""The one place where the server touches the engine: every call into ``smallmind.engine`` and
``smallmind.chat`` made by the serving layer is in this module.

A :class:`Slot` is one KV cache (a :class:`~smallmind.engine.Session`) that runs one request at
a time and keeps its tokens afterwards, so a later request sharing a prefix with them only runs
its new part. :func:`run_step` advances a list of slots by one step each: a slot still reading
its prompt runs its next chunk; a slot that is generating runs one token.

Today a step is one forward pass per slot, in turn, through the public streaming API
(``session.generate(..., stream=True)``). A batched forward replaces the body of
:func:`run_step`: gather the input rows of every slot (a prompt chunk, or one token), run them
through the weights together, attend per slot over its own cache, sample per slot with its own
:class:`Request` parameters, and return one :class:`Emitted` per slot (None for a slot whose
chunk did not reach the end of its prompt). For that a slot keeps, instead of the stream it
holds today, its own sampler (seeded), token history and text assembler (stop strings, UTF-8),
and the model provides one forward over several caches that returns the last row's logits of
each. The scheduler (``scheduler.py``) and the HTTP layer do not change; the tests that compare
served tokens with ``Engine.generate`` check that batching changes no token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..chat import chat_stop_strings, encode_chat
from ..engine import Engine, Session, TokenStream
from ._logprobs import LogprobTexts, TokenLogprob, token_logprob

if TYPE_CHECKING:  # pragma: no cover
    from ..structured.tools import ToolPlan

__all__ = ["Backend", "Emitted", "Request", "Slot", "load_engine", "run_step"]


DEFAULT_MAX_CTX = 4096  # each slot holds a whole cache: a model's full 8k+ context is a lot of RAM


def load_engine(model: str | None, *, n_threads: int | None = None, n_ctx: int | None = None) -> Engine:
    """The engine the server runs: a model file, or the embedded model when ``model`` is None.
    Without ``n_ctx``, slots hold the model's context up to :data:`DEFAULT_MAX_CTX` tokens."""
    if n_ctx is not None and int(n_ctx) < 2:
        raise ValueError(f"n_ctx must be >= 2, got {n_ctx}")
    if model:
        engine = Engine.load(model, n_threads=n_threads, n_ctx=n_ctx)
    else:
        engine = Engine.default(n_threads=n_threads or 1)
    engine.n_ctx = min(int(n_ctx or DEFAULT_MAX_CTX), engine.n_ctx)  # sessions take their size from it
    return engine


@dataclass(frozen=True)
class Request:
    """One sequence to generate: prompt token ids and how to sample the answer."""

    prompt: list[int]
    max_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)  # keyword arguments of generate()
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # report each token's logprob and this many alternatives (None: off)


@dataclass(frozen=True)
class Emitted:
    """What one step produced for one slot: a token (None for held-back text released at the
    end), its text, and the finish reason once the sequence is over ("stop" or "length")."""

    token: int | None
    text: str
    finish_reason: str | None = None
    logprob: TokenLogprob | None = None  # when the request asked for logprobs and token is not None


class Backend:
    """Tokenizer, chat template and model limits of an engine, as the server needs them."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.n_ctx = engine.n_ctx
        self.vocab_size = engine.config.vocab_size
        self.has_chat_template = bool(engine.chat_template)

    @property
    def model_id(self) -> str:
        name = self.engine.metadata.get("general.name") if self.engine.metadata else None
        if isinstance(name, str) and name:
            return name
        return "smallmind-default" if not self.engine.source else _basename(self.engine.source)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("this model has no tokenizer: send token ids")
        return tok.encode(text, add_special=add_special)

    def decode(self, ids: Sequence[int]) -> str:
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("this model has no tokenizer")
        return tok.decode([int(i) for i in ids])

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("this model has no tokenizer")
        return encode_chat(messages, tok, self.engine.chat_template, tools=tools)

    def tool_plan(self, messages: list[dict], tools: Any, tool_choice: Any) -> ToolPlan:
        """How ``engine.chat(messages, tools=..., tool_choice=...)`` renders and constrains a
        reply (ValueError/TypeError for bad tools)."""
        from ..structured.tools import ToolPlan
        return ToolPlan(self.engine.chat_template, messages, tools, tool_choice, {})

    @property
    def logprob_texts(self) -> LogprobTexts:
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("this model has no tokenizer")
        return LogprobTexts(tok)

    def check_constraint(self, **constraint: Any) -> None:
        """Compile a ``json_schema=`` / ``grammar=`` constraint for this vocabulary (cached);
        ValueError if it is invalid or uses a keyword that cannot be enforced, ImportError
        without the structured extra."""
        from ..structured import compile_grammar
        compile_grammar(self.engine.tokenizer, self.engine.config.vocab_size, **constraint)

    def chat_stops(self) -> list[str]:
        return chat_stop_strings(self.engine.chat_template)

    def new_slot(self) -> Slot:
        return Slot(self.engine.session())


class Slot:
    """One KV cache serving one request at a time (see the module docstring)."""

    def __init__(self, session: Session):
        self._session = session
        self._pending: list[int] = []  # prompt tokens not yet run
        self._stream: TokenStream | None = None
        self._request: Request | None = None
        self._generated = 0
        self._row: np.ndarray | None = None  # the last step's raw logits, when logprobs are asked

    @property
    def tokens(self) -> list[int]:
        """The tokens this slot's cache was filled from (its reusable prefix)."""
        return self._session.tokens

    @property
    def capacity(self) -> int:
        return self._session.capacity

    def common_prefix(self, ids: Sequence[int]) -> int:
        n = 0
        for a, b in zip(self._session.tokens, ids, strict=False):
            if a != b:
                break
            n += 1
        return n

    def start(self, request: Request) -> int:
        """Take ``request``; returns how many prompt tokens are already in the cache."""
        self.cancel()
        self._request = request
        self._generated = 0
        self._pending = self._session.continue_with(request.prompt)
        self._session._observe_logits = None if request.logprobs is None else self._keep_row
        return len(request.prompt) - len(self._pending)

    def _keep_row(self, logits: np.ndarray) -> None:
        if self._row is None or self._row.shape != logits.shape:
            self._row = np.empty_like(logits)
        np.copyto(self._row, logits)

    def _logprob(self, token: int) -> TokenLogprob | None:
        k = self._request.logprobs if self._request is not None else None
        if k is None or self._row is None:
            return None
        return token_logprob(self._row, token, k)

    @property
    def pending_prompt(self) -> int:
        """Prompt tokens still to run before the first generated token."""
        return len(self._pending)

    def advance(self, budget: int) -> Emitted | None:
        """Run up to ``budget`` prompt tokens, or one generated token (see :func:`run_step`)."""
        request = self._request
        assert request is not None, "advance() on an idle slot"
        if self._pending:
            if len(self._pending) > budget:
                chunk, self._pending = self._pending[:budget], self._pending[budget:]
                self._session.generate(chunk, max_new_tokens=0)
                return None
            last, self._pending = self._pending, []
            if request.max_tokens == 0:
                self._session.generate(last, max_new_tokens=0)
                return self._finish("")
            self._stream = self._session.generate(  # stream=True: a TokenStream
                last,
                max_new_tokens=request.max_tokens,
                stop=list(request.stop),
                stream=True,
                **request.sampling,
            )
        return self._next()

    def _next(self) -> Emitted:
        assert self._stream is not None
        try:
            chunk = next(self._stream)
        except StopIteration:
            return self._finish("")
        if chunk.token is None:  # held-back text, released as the stream ends
            return self._finish(chunk.text)
        self._generated += 1
        assert self._request is not None
        logprob = self._logprob(chunk.token)
        if self._generated >= self._request.max_tokens:  # the stream ends without a forward pass
            return self._finish(chunk.text, chunk.token, logprob)
        return Emitted(chunk.token, chunk.text, logprob=logprob)

    def _finish(self, text: str, token: int | None = None, logprob: TokenLogprob | None = None) -> Emitted:
        reason = "length"
        stream, self._stream = self._stream, None
        if stream is not None:
            for chunk in stream:  # only held-back text remains: no forward pass
                text += chunk.text
            result = getattr(stream, "result", None)
            if result is not None and result.finish_reason in ("stop", "eos"):
                reason = "stop"
        self._request = None
        self._session._observe_logits = None
        return Emitted(token, text, reason, logprob)

    def cancel(self) -> None:
        """Drop the running request (if any); the cache keeps what it holds for reuse."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()  # ends the generate call, so the session takes the next one
        self._pending = []
        self._request = None
        self._session._observe_logits = None

    def reset(self) -> None:
        """Forget the cache (after an error left it in an unknown state)."""
        self.cancel()
        self._session.reset()

    def close(self) -> None:
        self.cancel()
        self._session.close()


def run_step(work: Sequence[tuple[Slot, int]]) -> list[Emitted | BaseException | None]:
    """Advance each ``(slot, prefill_budget)`` by one step; one result per slot, in order:
    an :class:`Emitted`, None (a prompt chunk that did not reach the prompt's end), or the
    exception that slot raised (the other slots still run)."""
    out: list[Emitted | BaseException | None] = []
    for slot, budget in work:
        try:
            out.append(slot.advance(budget))
        except Exception as exc:  # noqa: BLE001  one bad sequence must not take the others down
            out.append(exc)
    return out


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
