"""Constrained decoding: a JSON schema, regular expression, Lark grammar or list of choices
becomes a token mask applied to each step's logits.

:func:`compile_grammar` checks and compiles the user's constraint once (an invalid one is a
``ValueError`` before any model work; compiled grammars are cached). :meth:`Grammar.start`
gives a :class:`Constraint`, the state of one generation, which the token loop drives:

    constraint.apply(logits)          # ban what the grammar does not allow, in place
    token = sampler.sample(logits)
    if constraint.advance(token):     # the grammar is complete: stop
        ...

``advance`` hands the next mask to a worker thread, which computes it (llguidance drops the
GIL) while the model's forward pass for ``token`` runs; ``apply`` waits for it.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._core._mask import apply_token_mask
from ..errors import SmallMindError
from ..tokenizers import Tokenizer
from ._vocab import Vocabulary, require_llguidance, vocabulary

__all__ = ["MASK_IN_THREAD", "Constraint", "ConstraintError", "Grammar", "compile_grammar"]

#: Compute each mask in a worker thread while the forward pass runs (benchmarks/structured.py
#: measures both ways).
MASK_IN_THREAD = True

#: JSON layout the model is held to unless the schema's "x-guidance" says otherwise: the
#: separators of ``json.dumps`` and no free whitespace, which a small model could otherwise
#: fill with newlines until it runs out of tokens.
_JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
#: Never lenient: a schema keyword llguidance does not implement is an error, not ignored.
_JSON_OVERRIDES = {"lenient": False}

#: Compiled grammars kept per vocabulary (they live as long as the tokenizer).
_CACHE_SIZE = 64
_cache_lock = threading.Lock()


class ConstraintError(SmallMindError):
    """The grammar matcher failed while generating (a bug or a resource limit, never bad input)."""


@dataclass(frozen=True, eq=False)
class Grammar:
    """A checked, compiled constraint for one vocabulary; reusable and thread-safe."""

    kind: str                    # "json_schema" | "regex" | "grammar" | "choices"
    source: str                  # the constraint as given (a schema as JSON text)
    vocab: Vocabulary
    _matcher: Any = field(repr=False)   # an llguidance.LLMatcher in its start state

    def start(self, *, in_thread: bool | None = None) -> Constraint:
        """A fresh :class:`Constraint` at the grammar's start."""
        return Constraint(self, MASK_IN_THREAD if in_thread is None else in_thread)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
    if value is True:  # the schema that allows any JSON value
        value = {}
    if not isinstance(value, Mapping):
        raise TypeError(f"json_schema must be a JSON object (dict or str), got {type(value).__name__}")
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"json_schema is not JSON-serialisable: {exc}") from None


def _source(json_schema: Any, regex: Any, grammar: Any, choices: Any) -> tuple[str, str] | None:
    given = {name: value for name, value in (("json_schema", json_schema), ("regex", regex),
                                             ("grammar", grammar), ("choices", choices))
             if value is not None}
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(f"pass at most one of json_schema, regex, grammar, choices; got {sorted(given)}")
    kind, value = given.popitem()
    if kind == "json_schema":
        return kind, _json_text(value)
    if kind == "choices":
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValueError(f"choices must be a non-empty list of strings, got {value!r}")
        for i, choice in enumerate(value):
            if not isinstance(choice, str) or not choice:
                raise ValueError(f"choices[{i}] must be a non-empty string, got {choice!r}")
        return kind, json.dumps(list(value))
    if not isinstance(value, str):
        raise TypeError(f"{kind} must be a string, got {type(value).__name__}")
    return kind, value


def _ll_grammar(kind: str, text: str) -> str:
    llg = require_llguidance()
    if kind == "json_schema":
        return llg.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_DEFAULTS,
                                                      overrides=_JSON_OVERRIDES)
    if kind == "choices":
        return llg.grammar_from("choice", text)
    return llg.grammar_from("regex" if kind == "regex" else "lark", text)


def compile_grammar(tokenizer: Tokenizer | None, n_logits: int, *, json_schema: Any = None,
                    regex: str | None = None, grammar: str | None = None,
                    choices: Sequence[str] | None = None) -> Grammar | None:
    """Check and compile the one constraint given (None when none is); cached.

    ``json_schema``: a dict or JSON text; ``regex``: a pattern the whole output matches
    (Rust ``regex`` syntax); ``grammar``: a Lark grammar (llguidance's dialect, which can
    embed ``%json{...}`` schemas); ``choices``: the output is exactly one of these strings.
    Raises ``ValueError`` for an invalid or unsupported constraint, naming the parameter.
    """
    source = _source(json_schema, regex, grammar, choices)
    if source is None:
        return None
    if tokenizer is None:
        raise ValueError(f"{source[0]} needs a model with a tokenizer")
    vocab = vocabulary(tokenizer, n_logits)
    cache = vocab.grammars
    with _cache_lock:
        hit = cache.get(source)
        if hit is not None:
            cache.move_to_end(source)
            return hit
    compiled = _compile(vocab, *source)
    with _cache_lock:
        cache[source] = compiled
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return compiled


def _compile(vocab: Vocabulary, kind: str, text: str) -> Grammar:
    llg = require_llguidance()
    try:
        ll_grammar = _ll_grammar(kind, text)
    except ValueError as exc:
        raise ValueError(f"invalid {kind}: {exc}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(ll_grammar, vocab.ll)
    if is_error or (kind == "json_schema" and messages):
        # A warning on a schema means part of it would not be enforced: refuse it.
        raise ValueError(f"invalid {kind}: {'; '.join(m.strip() for m in messages)}")
    matcher = llg.LLMatcher(vocab.ll, ll_grammar, log_level=0)
    if matcher.is_error():
        raise ValueError(f"invalid {kind}: {matcher.get_error()}")
    return Grammar(kind, text, vocab, matcher)


class _MaskWorker:
    """Runs ``job`` on a helper thread, or on the caller when the helper has not started it.

    A job is claimed by whoever first takes ``_claim``: the helper when it wakes in time,
    else the caller of :meth:`wait`, which then runs it itself, so a helper that the OS
    schedules late (a busy machine) never costs more than computing the mask inline.
    Blocking on a lock releases the GIL, so the forward pass keeps running meanwhile.
    """

    def __init__(self, job: Callable[[], None]):
        self._job = job
        self._wake = threading.Semaphore(0)
        self._claim = threading.Lock()
        self._claim.acquire()             # held: no job to take
        self._done = threading.Lock()     # held while a job is pending or running
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="smallmind-mask", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.acquire()
            if self._closed:
                return
            if not self._claim.acquire(blocking=False):
                continue  # the caller took this job already
            try:
                self._job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
                self._error = exc
            finally:
                self._done.release()

    def submit(self) -> None:
        self._done.acquire()
        self._claim.release()
        self._wake.release()

    def wait(self) -> None:
        if self._claim.acquire(blocking=False):  # not started: run it here
            try:
                self._job()
            finally:
                self._done.release()
        else:
            self._done.acquire()
            self._done.release()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        if self._closed:
            return
        if self._claim.acquire(blocking=False):   # a pending job nobody started: drop it
            self._done.release()
        self._done.acquire()                     # wait for one in progress
        self._closed = True
        self._wake.release()
        self._done.release()
        self._thread.join()


class Constraint:
    """The grammar state of one generation. Not thread-safe: one per token loop.

    ``mask_ns`` adds up the time spent computing masks (on the worker thread when there is
    one), ``wait_ns`` the time the token loop spent in :meth:`apply` and :meth:`advance`,
    and ``steps`` counts the masks applied.
    """

    def __init__(self, grammar: Grammar, in_thread: bool):
        self.grammar = grammar
        self._matcher = grammar._matcher.deep_copy()
        self._bits = np.zeros(grammar.vocab.mask_words, dtype=np.uint32)
        self._ptr, self._nbytes = self._bits.ctypes.data, self._bits.nbytes
        self._worker = _MaskWorker(self._compute) if in_thread else None
        self._pending = False
        self.mask_ns = self.wait_ns = self.steps = 0

    @property
    def bits(self) -> np.ndarray:
        """The last mask (uint32 words, bit ``t & 31`` of word ``t >> 5`` allows token t)."""
        return self._bits

    def _compute(self) -> None:
        t0 = time.perf_counter_ns()
        self._matcher.unsafe_compute_mask_ptr(self._ptr, self._nbytes)
        self.mask_ns += time.perf_counter_ns() - t0

    def _schedule(self) -> None:
        self._pending = True
        if self._worker is not None:
            self._worker.submit()

    def start(self) -> None:
        """Begin computing the first mask (call before the prompt's forward pass)."""
        if not self._pending:
            self._schedule()

    def apply(self, logits: np.ndarray) -> None:
        """Set every logit the grammar forbids to -inf, in place."""
        t0 = time.perf_counter_ns()
        if not self._pending:
            self._schedule()
        if self._worker is not None:
            self._worker.wait()
        else:
            self._compute()
        self._pending = False
        if self._matcher.is_error():
            raise ConstraintError(f"{self.grammar.kind} matcher failed: {self._matcher.get_error()}")
        apply_token_mask(logits, self._bits)
        self.steps += 1
        self.wait_ns += time.perf_counter_ns() - t0

    def advance(self, token: int) -> bool:
        """Feed the sampled ``token``; True when the grammar is complete and nothing may follow."""
        t0 = time.perf_counter_ns()
        if not self._matcher.consume_token(int(token)):
            raise ConstraintError(f"{self.grammar.kind} matcher rejected token {token}: "
                                  f"{self._matcher.get_error()}")
        done = self._matcher.is_stopped()
        if not done:
            self._schedule()
        self.wait_ns += time.perf_counter_ns() - t0
        return done

    def is_accepting(self) -> bool:
        """Whether the output so far is a complete match."""
        return self._matcher.is_accepting()

    def value(self, text: str) -> Any:
        """The parsed JSON value of a complete output of a ``json_schema`` constraint, else None."""
        if self.grammar.kind != "json_schema" or not self._matcher.is_accepting():
            return None
        return json.loads(text)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __del__(self) -> None:  # the engine closes it; this is for hand-driven use
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - nothing to report to at collection time
            pass
