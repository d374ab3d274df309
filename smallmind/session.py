"""A conversation with its own KV cache: :class:`Session`.

Rules a session keeps, whatever happens:

* **One call at a time.** A second concurrent ``generate`` (or ``reset``/``close``) on a
  session that is running raises :class:`SessionBusyError`; a stream keeps its session
  only while a ``next()`` runs, and a new call on the session makes the old stream stale
  (:class:`StaleStreamError` if resumed). Use one session per thread.
* **Limits keep the work.** A prompt that cannot fit is refused before any work
  ("prompt is N tokens, context is M"); generation that reaches the end of the context
  stops with ``finish_reason="length"`` and returns everything it produced.
* **State survives every error.** If a call fails (bad logits, Ctrl-C, ...) the session is
  rolled back to where the call started, so ``tokens`` and the cache always agree.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from ._checks import check_bool, check_int, token_ids
from ._text import _TextAssembler
from ._threads import check_threads
from .errors import ContextOverflowError, NonFiniteError, SessionBusyError, SmallMindError, TokenizerError
from .kv_cache import OVERFLOW_POLICIES
from .results import GenerationResult, Timings, TokenChunk, TokenStream, _Run
from .sampling import Sampler, SamplingError, SamplingParams
from .structured import Grammar, compile_grammar

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .models.base import DecoderModel
    from .structured.constraint import Constraint


class Session:
    """A conversation with its own KV cache.

    Successive :meth:`generate` calls continue from the cached state: only tokens not yet
    in the cache are run through the model. ``overflow="shift"`` slides the window when the
    context is full (keeping the first ``n_keep`` tokens) instead of stopping.
    """

    def __init__(self, engine: Engine, *, overflow: str = "error", n_keep: int = 0,
                 n_threads: int | None = None, n_ctx: int | None = None):
        if not isinstance(overflow, str) or overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        capacity = engine.n_ctx if n_ctx is None else check_int("n_ctx", n_ctx, 1, engine.n_ctx)
        self.engine = engine
        self.overflow = overflow
        self.n_keep = check_int("n_keep", n_keep, 0, capacity - 1)
        #: Threads of this session's forward passes (a generate call may override it once).
        self.n_threads = engine.n_threads if n_threads is None else check_threads(n_threads)
        self._state = engine.model.new_state(capacity=capacity, n_threads=self.n_threads,
                                             overflow=overflow, n_keep=self.n_keep)
        #: Every token of the conversation so far; the cache holds a prefix of them.
        self.tokens: list[int] = []
        self._history = np.zeros(capacity + 1, dtype=np.int32)
        self._lock = threading.Lock()
        self._epoch = 0              # bumped by every call: older streams are stale
        self._open_stream = -1       # epoch of a stream not yet finished
        self._dropped = 0            # tokens a slide discarded during the current call
        self._last_row = 0           # workspace row of the last forward's final position
        self._peak = -1              # the last forward's Forward.peak (first index of its max logit)

    @property
    def capacity(self) -> int:
        return self._state.cache.capacity

    @property
    def busy(self) -> bool:
        """True while a call runs or a stream of the latest call is unfinished."""
        return self._lock.locked() or self._open_stream == self._epoch

    # -- one call at a time -----------------------------------------------------------------
    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise SessionBusyError("this session is running another call; a session serves one "
                                   "call at a time (use one session per thread, or Engine.generate)")
        try:
            yield
        finally:
            self._lock.release()

    def _stream_done(self, epoch: int) -> None:
        if self._open_stream == epoch:
            self._open_stream = -1

    def _check_open(self) -> None:
        if self._state is None:
            raise SmallMindError("this session is closed")

    # -- editing ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation (keeps the buffers); a pending stream becomes stale."""
        with self._claim():
            self._check_open()
            self._epoch += 1
            self._state.cache.reset()
            self.tokens = []

    def continue_with(self, ids: Sequence[int]) -> list[int]:
        """Make the conversation a prefix of ``ids`` and return the tokens still to run.

        Keeps the longest common prefix of the cached conversation and ``ids`` (so a chat
        re-rendered each turn only prefills its new part) and drops the rest. At least one
        token is always returned, since the model needs an input to produce logits.
        """
        with self._claim():
            self._check_open()
            ids = token_ids("ids", ids, self.engine.config.vocab_size)
            if not ids:
                raise ValueError("ids must not be empty")
            self._epoch += 1
            common = 0
            for a, b in zip(self.tokens, ids, strict=False):
                if a != b:
                    break
                common += 1
            common = min(common, len(ids) - 1)
            del self.tokens[common:]
            if self._state.cache.length > common:
                self._state.cache.truncate(common)
            return ids[common:]

    def close(self) -> None:
        """Give the buffers back (idempotent); later calls raise."""
        with self._claim():
            if self._state is not None:
                self._epoch += 1
                self._state.close()
                self._state = None  # type: ignore[assignment]  # closed: generate() refuses

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # release pooled buffers if the user forgot close()
        try:
            self.close()
        except Exception:
            pass

    # -- generation ---------------------------------------------------------------------------
    @overload
    def generate(self, prompt: str | Sequence[int] = ..., params: SamplingParams | None = ..., *,
                 stream: Literal[False] = ..., **kwargs: Any) -> GenerationResult: ...

    @overload
    def generate(self, prompt: str | Sequence[int] = ..., params: SamplingParams | None = ..., *,
                 stream: Literal[True], **kwargs: Any) -> TokenStream: ...

    @overload
    def generate(self, prompt: str | Sequence[int] = ..., params: SamplingParams | None = ..., *,
                 stream: bool, **kwargs: Any) -> GenerationResult | TokenStream: ...

    def generate(self, prompt: str | Sequence[int] = "", params: SamplingParams | None = None, *,
                 stream: bool = False, profile: bool = False, add_special: bool | None = None,
                 n_threads: int | None = None, json_schema: Any = None, regex: str | None = None,
                 grammar: str | None = None, choices: Sequence[str] | None = None,
                 **sampling: Any) -> GenerationResult | TokenStream:
        """Continue the conversation with ``prompt`` and sample up to ``max_new_tokens``.

        ``prompt`` is text (encoded with the model's tokenizer; BOS is added at the start of a
        conversation when the model asks for it) or token ids. The generation parameters are
        ``params`` (a :class:`SamplingParams`) and/or its fields as keywords
        (``max_new_tokens=64, temperature=0, stop=["\\n"]`` ...). Returns a
        :class:`GenerationResult`, or with ``stream=True`` a :class:`TokenStream` of
        :class:`TokenChunk` whose texts join to the same text. ``n_threads`` applies to
        this call only.

        A prompt that does not fit in the context raises :class:`ContextOverflowError` before
        any work; reaching the end of the context ends the call with
        ``finish_reason="length"``. When a stop string ends the call, the returned text
        stops before it, while ``result.tokens`` and :attr:`tokens` (the model's context)
        keep the tokens that spelled it.

        ``json_schema`` (dict or JSON text), ``regex``, ``grammar`` (Lark) or ``choices`` (a
        list of strings) constrain the output (the ``structured`` extra): it ends, with
        finish_reason "stop", once the constraint is complete, and ``result.json`` holds
        the parsed value of a complete JSON-schema output.
        """
        p = SamplingParams.build(params, **sampling)
        constraint = compile_grammar(self.engine.tokenizer, self.engine.config.vocab_size,
                                     json_schema=json_schema, regex=regex, grammar=grammar,
                                     choices=choices)
        stream = bool(check_bool("stream", stream))
        profile = bool(check_bool("profile", profile))
        add_special = check_bool("add_special", add_special, optional=True)
        nt = self.n_threads if n_threads is None else check_threads(n_threads)
        with self._claim():
            return self._generate_claimed(prompt, p, stream, profile, add_special, nt, constraint)

    def _generate_claimed(self, prompt: str | Sequence[int], p: SamplingParams, stream: bool,
                          profile: bool, add_special: bool | None, n_threads: int,
                          grammar: Grammar | None) -> GenerationResult | TokenStream:
        """generate() once the session is claimed and the arguments are checked."""
        self._check_open()
        ids = self._encode_prompt(prompt, add_special)
        self._check_fits(ids)
        self._epoch += 1
        run = _Run(prompt_tokens=ids)
        chunks = self._run(run, p, profile, n_threads, self._epoch, grammar)
        if stream:
            self._open_stream = self._epoch
            return TokenStream(self, chunks, run, self._epoch)
        for _ in chunks:
            pass
        return run.result()

    def _encode_prompt(self, prompt: str | Sequence[int], add_special: bool | None) -> list[int]:
        tok = self.engine.tokenizer
        vocab = self.engine.config.vocab_size
        if isinstance(prompt, str):
            if tok is None:
                raise SmallMindError("this model has no tokenizer: pass token ids, not text")
            if add_special is None and self.tokens:
                add_special = False  # BOS only at the start of a conversation
            try:
                ids = tok.encode(prompt, add_special=add_special)
            except SmallMindError:
                raise
            except (IndexError, KeyError, ValueError, UnicodeError) as exc:
                raise TokenizerError(f"the model's tokenizer failed on this prompt: {exc!r}") from exc
            ids = token_ids("prompt", ids, vocab)
        else:
            ids = token_ids("prompt", prompt, vocab)
        if not ids and not self.tokens:
            bos = tok.bos_id if tok is not None else None
            if bos is None:
                raise ValueError("the prompt is empty and this model has no BOS token to start from")
            ids = [bos]
        return ids

    def _check_fits(self, ids: list[int]) -> None:
        cache = self._state.cache
        capacity = cache.capacity
        if self.overflow == "shift":
            uncached = len(self.tokens) - min(cache.length, len(self.tokens)) + len(ids)
            if uncached > capacity - self.n_keep:
                raise ContextOverflowError(
                    f"prompt is {len(ids)} tokens, context is {capacity} (of which n_keep="
                    f"{self.n_keep} are kept when it slides): shorten the prompt")
            return
        if len(self.tokens) + len(ids) > capacity:
            held = (f" and the conversation already holds {len(self.tokens)}" if self.tokens else "")
            raise ContextOverflowError(
                f"prompt is {len(ids)} tokens, context is {capacity}{held}: shorten the prompt, "
                f"reset() the session, or use overflow='shift'")

    def _forward(self, ids: Sequence[int], profiler: Any) -> np.ndarray:
        model = self.engine.model
        fwd = model.forward(self._state, ids, profiler=profiler)
        if fwd.shifts:  # the window slid: drop the discarded tokens from the history too
            keep = self._state.cache.n_keep
            del self.tokens[keep:keep + fwd.n_discarded]
            self._dropped += fwd.n_discarded
        ws = self._state.workspace
        self._last_row = (len(ids) - 1) % ws.max_tokens
        self._peak = fwd.peak
        return fwd.logits

    def _sample(self, sampler: Sampler, logits: np.ndarray, history: np.ndarray, peak: int) -> int:
        """:func:`_sample_checked`, whose slow path names the layer (:meth:`_check_finite`)."""
        return _sample_checked(sampler, logits, history, peak, self._check_finite)

    def _check_finite(self, logits: np.ndarray) -> None:
        """The slow path: every logit finite, and the last hidden state's squared norm
        within float32; otherwise NonFiniteError naming the layer and position."""
        hidden = self._state.workspace.arrays["x"][self._last_row]
        with np.errstate(over="ignore", invalid="ignore"):
            ok = math.isfinite(float(np.dot(hidden, hidden))) and bool(np.isfinite(logits).all())
        if not ok:
            raise _non_finite_error(self.engine.model, self.tokens[:self._state.cache.length],
                                    self._state.n_threads)

    def _run(self, run: _Run, params: SamplingParams, profile: bool, n_threads: int,
             epoch: int, grammar: Grammar | None = None) -> Generator[TokenChunk, None, None]:
        from .profiler import current_profiler
        from .profiler import profile as profile_ctx
        engine, state = self.engine, self._state
        cache = state.cache
        state.n_threads = n_threads  # this call only: every call sets its own
        tok = engine.tokenizer
        sampler = Sampler(params, engine.config.vocab_size)
        sampler._set_threads(n_threads)  # a large vocabulary's weights on the forward's threads
        stop_ids = tok.stop_ids() if tok is not None else frozenset()
        ctx = profile_ctx() if profile else None
        profiler = ctx.__enter__() if ctx is not None else current_profiler()
        t_start = time.perf_counter_ns()
        n_tokens0, cache0 = len(self.tokens), min(cache.length, len(self.tokens))
        self._dropped = 0
        constraint = grammar.start() if grammar is not None else None
        try:
            cache.truncate(cache0)  # the cache may have outrun a truncated history
            if not run.prompt_tokens and cache0 == len(self.tokens):
                cache.truncate(cache0 - 1)  # nothing new to run: re-run the last token for logits
            pending = self.tokens[cache.length:] + run.prompt_tokens
            self.tokens.extend(run.prompt_tokens)
            hist = self._history
            strip = tok is not None and tok.add_space_prefix and self.tokens[-1:] == [tok.bos_id]
            text = _TextAssembler(tok, list(params.stop or ()), strip) if tok is not None else None
            if constraint is not None:
                constraint.start()  # the first mask is computed while the prompt runs
            logits = self._forward(pending, profiler)
            self._check_finite(logits)  # once per call, in full
            t_prompt = time.perf_counter_ns()
            t_first = t_prompt
            n_hist = -1
            for i in range(params.max_new_tokens):
                if n_hist != len(self.tokens):  # first step, or the cache slid: resync
                    n_hist = min(len(self.tokens), hist.shape[0] - 1)
                    hist[:n_hist] = self.tokens[len(self.tokens) - n_hist:]
                peak = _masked(constraint, logits, self._peak)
                if profiler is None:
                    token = self._sample(sampler, logits, hist[:n_hist], peak)
                else:
                    with profiler.span("sampling", tokens=1):
                        token = self._sample(sampler, logits, hist[:n_hist], peak)
                if i == 0:
                    t_first = time.perf_counter_ns()
                if token in stop_ids:  # under a constraint, only allowed once it is complete
                    run.finish_reason = "eos" if constraint is None else "stop"
                    break
                complete = constraint is not None and constraint.advance(token)
                self.tokens.append(token)
                run.tokens.append(token)
                if n_hist < hist.shape[0]:
                    hist[n_hist] = token
                    n_hist += 1
                piece = text.feed(token) if text is not None else ""
                run.text.append(piece)
                yield TokenChunk(token, piece)
                if (text is not None and text.stopped) or complete:
                    run.finish_reason = "stop"
                    break
                if i + 1 == params.max_new_tokens:
                    break
                if cache.overflow == "error" and cache.length + 1 > cache.capacity:
                    break  # the context is full: finish_reason stays "length"
                logits = self._forward([token], profiler)
            tail = text.finish() if text is not None else ""
            if tail:
                run.text.append(tail)
                yield TokenChunk(None, tail)
            run.timings = _timings(t_start, t_prompt, t_first, time.perf_counter_ns(),
                                   len(pending), len(run.tokens))
            if constraint is not None and run.finish_reason == "stop" and not (text and text.stopped):
                run.json = constraint.value("".join(run.text))  # complete, not cut by `stop`
        except GeneratorExit:
            raise  # closed or dropped early: what was produced stays, consistently
        except BaseException:
            if self._epoch == epoch and self._state is state:
                # Roll back to where this call started (less what a slide discarded).
                del self.tokens[max(n_tokens0 - self._dropped, 0):]
                cache.truncate(min(cache.length, max(cache0 - self._dropped, 0)))
            raise
        finally:
            if constraint is not None:
                constraint.close()
            if ctx is not None:
                ctx.__exit__(None, None, None)
                run.profile = profiler


def _masked(constraint: Constraint | None, logits: np.ndarray, peak: int) -> int:
    """Apply a structured constraint's mask to ``logits`` (in place), if there is one, and
    return what is still known of their peak (the head's ``Forward.peak``): nothing (-1) once
    they are masked. The sampler itself drops the peak under penalties and a bias reaching it."""
    if constraint is None:
        return peak
    constraint.apply(logits)
    return -1


def _sample_checked(sampler: Sampler, logits: np.ndarray, history: np.ndarray, peak: int,
                    check_finite: Callable[[np.ndarray], None]) -> int:
    """``sampler.sample`` told the logits' ``peak`` (see :func:`_masked`; -1: not known), plus
    the cheap check for non-finite activations: the chosen token's logit must be finite and
    differ from its neighbour's (an RMSNorm over an overflowed hidden state makes every logit
    0). Only a failed check, or NaN logits the sampler refused, take the slow path,
    ``check_finite(logits)``, which looks at everything and raises NonFiniteError."""
    try:
        token = sampler._sample_at(logits, history, peak)
    except SamplingError:
        check_finite(logits)
        raise
    value = logits[token]
    if not math.isfinite(value) or value == logits[token - 1]:
        check_finite(logits)
    return token


def _timings(t_start: int, t_prompt: int, t_first: int, t_end: int, n_prompt: int,
             n_dec: int) -> Timings:
    prompt_s = (t_prompt - t_start) / 1e9
    decode_s = (t_end - t_first) / 1e9
    return Timings(
        prompt_ms=prompt_s * 1e3, decode_ms=decode_s * 1e3,
        prompt_tokens_per_s=n_prompt / prompt_s if prompt_s > 0 else 0.0,
        decode_tokens_per_s=(n_dec - 1) / decode_s if n_dec > 1 and decode_s > 0 else 0.0,
        ttft_ms=(t_first - t_start) / 1e6, prompt_tokens=n_prompt, decode_tokens=n_dec)


def _non_finite_error(model: DecoderModel, tokens: list[int], n_threads: int) -> NonFiniteError:
    """Re-run ``tokens`` layer by layer in a fresh state to name where NaN/inf first appears
    (the error path only: the hot path checks one sum per step)."""
    where = "the output head"
    state = model.new_state(capacity=max(len(tokens), 1), n_threads=n_threads)
    try:
        ws, cache = state.workspace, state.cache
        x = ws.arrays["x"]
        done = 0
        while done < len(tokens) and where == "the output head":
            n = min(ws.max_tokens, len(tokens) - done)
            pos0, _ = cache.reserve(n)
            ws.set_tokens(tokens, done, n)
            model._embed(ws, n, pos0)
            steps = [("the token embedding", None)] + [(f"layer {i}", i) for i in range(len(model.layers))]
            for name, i in steps:
                if i is not None:
                    model.run_layer(i, ws, pos0, n, n_threads)
                with np.errstate(over="ignore", invalid="ignore"):
                    bad = ~np.isfinite(np.einsum("ij,ij->i", x[:n], x[:n]))
                if bad.any():
                    where = f"{name} at position {done + int(np.argmax(bad))}"
                    break
            cache.commit(n)
            done += n
    finally:
        state.close()
    return NonFiniteError(f"the model produced NaN, infinite or overflowing values (a squared "
                          f"norm past float32's range), first in {where} "
                          f"(of {len(model.layers)} layers, {len(tokens)} positions); its weights "
                          f"or hyper-parameters are broken. The session was rolled back.")
