"""The one place where the server touches the engine: every call into ``smallmind.engine`` and
``smallmind.chat`` made by the serving layer is in this module.

A :class:`Slot` is one KV cache (a :class:`~smallmind.engine.Session`) that runs one request at
a time and keeps its tokens afterwards, so a later request sharing a prefix with them only runs
its new part. :func:`run_step` advances a list of slots by one step in one batched forward pass
(:meth:`~smallmind.models.base.DecoderModel.forward_batch`): the rows of every slot (the next
chunk of a prompt, or the token generated last) go through the weights together, each attends
over its own cache, and each slot samples with its own :class:`~smallmind.batch.Decoder`
(seeded sampler, token history, text assembler with stop strings and whole UTF-8 characters,
structured constraint). Every row is computed bit for bit as the same row alone, and a prompt
is cut into chunks that fall within those a lone ``generate`` would run (which picks the
matmul kernel of float weights), so batching changes no token: the tests compare served tokens
with ``Engine.generate``. The scheduler (``scheduler.py``) and the HTTP layer do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..batch import Decoder
from ..chat import chat_stop_strings, encode_chat
from ..engine import Engine, Session
from ..models.base import PACKED_MIN_ROWS, BatchState
from ..sampling import SamplingParams
from ..structured import compile_grammar
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
        self._batch: _Batch | None = None

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
        if self._batch is None:
            self._batch = _Batch(self.engine)
        return Slot(self.engine.session(), self._batch)


_CONSTRAINTS = ("json_schema", "regex", "grammar", "choices")


class _Batch:
    """The batch buffers the slots of one engine share, grown (rarely) to the largest step."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.state: BatchState | None = None

    def get(self, n_seqs: int, n_rows: int) -> BatchState:
        state = self.state
        if state is None or state.max_seqs < n_seqs or state.workspace.max_tokens < n_rows:
            seqs = max(n_seqs, state.max_seqs if state else 1)
            rows = max(n_rows, state.workspace.max_tokens if state else 1, seqs)
            if state is not None:
                state.close()
            self.state = state = self.engine.model.new_batch(
                max_seqs=seqs, max_tokens=rows, capacity=self.engine.n_ctx, n_threads=self.engine.n_threads)
        return state


class Slot:
    """One KV cache serving one request at a time (see the module docstring)."""

    def __init__(self, session: Session, batch: _Batch):
        self._session = session
        self._batch = batch
        self._pending: list[int] = []  # prompt tokens not yet run
        self._chunk_left = 0  # of the pending chunk a lone generate would run
        self._chunk_packed = False
        self._decoder: Decoder | None = None
        self._request: Request | None = None
        self._next: list[int] = []  # the rows of this slot's next step

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
        self._pending = self._session.continue_with(request.prompt)
        self._chunk_left = 0
        return len(request.prompt) - len(self._pending)

    @property
    def pending_prompt(self) -> int:
        """Prompt tokens still to run before the first generated token."""
        return len(self._pending)

    def _plan(self, budget: int) -> tuple[list[int], bool]:
        """The rows this step runs for the slot (up to ``budget`` prompt tokens, or the last
        generated token) and whether a lone generate would run them with the packed kernel."""
        request = self._request
        assert request is not None, "advance() on an idle slot"
        if self._decoder is None:  # the request's parameters are checked here, not in start()
            sampling = dict(request.sampling)
            grammar = compile_grammar(self._session.engine.tokenizer, self._session.engine.config.vocab_size,
                                      **{k: sampling.pop(k) for k in _CONSTRAINTS if k in sampling})
            params = SamplingParams.build(None, max_new_tokens=request.max_tokens, stop=list(request.stop),
                                          **sampling)
            self._decoder = Decoder(self._session.engine, params, request.prompt, request.prompt,
                                    self.capacity, grammar)
        if not self._pending:
            return self._next, False
        if self._chunk_left == 0:  # the next chunk of session.generate(pending) alone
            self._chunk_left = min(len(self._pending), self._session._state.workspace.max_tokens)
            self._chunk_packed = self._chunk_left >= PACKED_MIN_ROWS
        n = max(1, min(budget, self._chunk_left))
        return self._pending[:n], self._chunk_packed

    def _after(self, ran: list[int], logits: np.ndarray, peak: int = -1) -> Emitted | None:
        """Book the rows that ran; sample from their last row (whose largest logit is first at
        ``peak``, the head's; -1: not known) once the prompt is done."""
        self._session.tokens.extend(ran)
        decoder = self._decoder
        assert decoder is not None
        if self._pending:
            del self._pending[:len(ran)]
            self._chunk_left -= len(ran)
            if self._pending:
                return None
            decoder.prompt_done()
        k = self._request.logprobs if self._request is not None else None
        # logprobs are those of the raw logits: copied before the sampler's bias, penalties
        # and grammar mask edit the row in place
        row = logits.copy() if k is not None and not decoder.done else None
        chunk = None if decoder.done else decoder.step(logits, peak)
        token = chunk.token if chunk is not None else None
        logprob: TokenLogprob | None = None
        if row is not None and token is not None and k is not None:
            logprob = token_logprob(row, token, k)
        cache = self._session._state.cache
        if chunk is not None and token is not None and not decoder.done and cache.length < cache.capacity:
            self._next = [token]
            return Emitted(token, chunk.text, logprob=logprob)
        text = (chunk.text if chunk is not None else "") + decoder.finish()
        reason = "stop" if decoder.run.finish_reason in ("stop", "eos") else "length"
        self._decoder = self._request = None
        return Emitted(token, text, reason, logprob)

    def advance(self, budget: int) -> Emitted | None:
        """Run this slot alone for one step (see :func:`run_step`)."""
        result = run_step([(self, budget)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def cancel(self) -> None:
        """Drop the running request (if any); the cache keeps what it holds for reuse."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.close()
        self._pending = []
        self._request = None

    def reset(self) -> None:
        """Forget the cache (after an error left it in an unknown state)."""
        self.cancel()
        self._session.reset()

    def close(self) -> None:
        self.cancel()
        self._session.close()


def run_step(work: Sequence[tuple[Slot, int]],
             on_compute: Callable[[], None] | None = None) -> list[Emitted | BaseException | None]:
    """Advance each ``(slot, prefill_budget)`` by one step, all in one batched forward pass; one
    result per slot, in order: an :class:`Emitted`, None (a prompt chunk that did not reach the
    prompt's end), or the exception that slot raised (the other slots still run; an error of
    the forward pass itself is every slot's). ``on_compute`` is called once, as the first
    forward pass starts its layers (see ``forward_batch``); not at all when none runs."""
    out: list[Emitted | BaseException | None] = [None] * len(work)
    planned: list[tuple[int, Slot, list[int], bool]] = []
    for k, (slot, budget) in enumerate(work):
        try:
            ran, packed = slot._plan(budget)
            planned.append((k, slot, ran, packed))
        except Exception as exc:  # noqa: BLE001  one bad sequence must not take the others down
            out[k] = exc
    for group in _by_batch(planned):
        batch = group[0][1]._batch
        try:
            state = batch.get(len(group), sum(len(ran) for _, _, ran, _ in group))
            fwd = batch.engine.model.forward_batch(
                state, [(slot._session._state, ran) for _, slot, ran, _ in group],
                packed=[packed for *_, packed in group], on_compute=on_compute)
            on_compute = None
        except Exception as exc:  # noqa: BLE001
            for k, *_ in group:
                out[k] = exc
            continue
        for (k, slot, ran, _), logits, peak in zip(group, fwd.logits, fwd.peaks, strict=True):
            try:
                out[k] = slot._after(ran, logits, int(peak))
            except Exception as exc:  # noqa: BLE001
                out[k] = exc
    return out


def _by_batch(planned: list) -> list[list]:
    """The planned slots grouped by the engine (batch buffers) they run on."""
    groups: dict[int, list] = {}
    for item in planned:
        groups.setdefault(id(item[1]._batch), []).append(item)
    return list(groups.values())


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
