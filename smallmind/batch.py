"""Several sequences decoded together: :func:`generate_batch` (``Engine.generate_batch``) and
the per-sequence book-keeping it shares with the server (:class:`Decoder`).

A batch step runs one row per sequence through the weights at once
(:meth:`~smallmind.models.base.DecoderModel.forward_batch`: one pass over the weights for all
of them), each row attending over its own sequence's KV cache. Each sequence keeps its own
sampler (seeded), token history, text assembler (stop strings, whole UTF-8 characters) and
structured constraint, so a sequence gives the same tokens alone or in a batch: prompts are
prefilled as ``generate`` prefills them, and every batched row is computed bit for bit as the
same row alone (``tests/test_batch.py`` checks it).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import check_bool, check_int
from ._text import _TextAssembler
from ._threads import check_threads
from .errors import NonFiniteError
from .results import GenerationResult, TokenChunk, _Run
from .sampling import Sampler, SamplingParams
from .session import Session, _masked, _sample_checked, _timings
from .structured import Grammar, compile_grammar

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

__all__ = ["Decoder", "generate_batch"]

#: Sequences decoded together by default (more prompts join as earlier ones finish).
DEFAULT_MAX_BATCH = 16


class Decoder:
    """What happens to one sequence's logits, token after token: sample with its own
    :class:`Sampler`, check the constraint, turn the token into text, decide the end.

    ``context`` is every token the sequence's cache holds before the first sample (the
    penalties' history, as :meth:`Session.generate` sees it). ``step(logits)`` returns the
    :class:`TokenChunk` of the sampled token, or None when the sequence ended without one
    (end of sequence); ``step(logits, peak)`` is told the head's peak of the row (as
    :meth:`Session.generate` is, and dropping it where it does); :attr:`done` tells whether
    another forward pass is wanted, and :meth:`finish` ends it (held-back text, timings, the
    result).
    """

    def __init__(self, engine: Engine, params: SamplingParams, prompt_tokens: list[int],
                 context: Sequence[int], capacity: int, grammar: Grammar | None = None):
        tok = engine.tokenizer
        self.params = params
        self.sampler = Sampler(params, engine.config.vocab_size)
        self.stop_ids = tok.stop_ids() if tok is not None else frozenset()
        strip = tok is not None and tok.add_space_prefix and list(context[-1:]) == [tok.bos_id]
        self.text = _TextAssembler(tok, list(params.stop or ()), strip) if tok is not None else None
        self.history = np.zeros(capacity + 1, dtype=np.int32)
        self.n_hist = min(len(context), capacity)
        self.history[:self.n_hist] = context[len(context) - self.n_hist:]
        self.run = _Run(prompt_tokens=prompt_tokens)
        self.constraint = grammar.start() if grammar is not None else None
        if self.constraint is not None:
            self.constraint.start()  # the first mask is computed while the prompt runs
        self.done = params.max_new_tokens == 0
        self.t_start = time.perf_counter_ns()
        self.t_prompt = self.t_first = self.t_start

    def prompt_done(self) -> None:
        self.t_prompt = self.t_first = time.perf_counter_ns()

    def step(self, logits: np.ndarray, peak: int = -1) -> TokenChunk | None:
        """Sample the next token from ``logits`` (this sequence's last row), whose largest
        logit is first at ``peak`` (the head's ``Forward.peak`` / ``BatchForward.peaks``; -1:
        not known)."""
        run = self.run
        peak = _masked(self.constraint, logits, peak)
        token = _sample_checked(self.sampler, logits, self.history[:self.n_hist], peak, _check_finite)
        if not run.tokens:
            self.t_first = time.perf_counter_ns()
        if token in self.stop_ids:  # under a constraint, only allowed once it is complete
            run.finish_reason = "eos" if self.constraint is None else "stop"
            self.done = True
            return None
        complete = self.constraint is not None and self.constraint.advance(token)
        run.tokens.append(token)
        if self.n_hist < self.history.shape[0]:
            self.history[self.n_hist] = token
            self.n_hist += 1
        piece = self.text.feed(token) if self.text is not None else ""
        run.text.append(piece)
        if (self.text is not None and self.text.stopped) or complete:
            run.finish_reason = "stop"
            self.done = True
        elif len(run.tokens) == self.params.max_new_tokens:
            self.done = True
        return TokenChunk(token, piece)

    def finish(self) -> str:
        """End the sequence: returns the text held back until now (may be empty)."""
        run = self.run
        tail = self.text.finish() if self.text is not None else ""
        if tail:
            run.text.append(tail)
        run.timings = _timings(self.t_start, self.t_prompt, self.t_first, time.perf_counter_ns(),
                               len(run.prompt_tokens), len(run.tokens))
        constraint, self.constraint = self.constraint, None
        if constraint is not None:
            stopped = self.text is not None and self.text.stopped
            if run.finish_reason == "stop" and not stopped:
                run.json = constraint.value("".join(run.text))  # complete, not cut by `stop`
            constraint.close()
        self.done = True
        return tail

    def close(self) -> None:
        """Drop the constraint's worker (a sequence abandoned before :meth:`finish`)."""
        constraint, self.constraint = self.constraint, None
        if constraint is not None:
            constraint.close()


def _check_finite(logits: np.ndarray) -> None:
    if not bool(np.isfinite(logits).all()):
        raise NonFiniteError("the model produced NaN or infinite logits for a sequence of the batch; "
                             "its weights or hyper-parameters are broken (Engine.generate on that "
                             "prompt names the layer)")


def _per_prompt_params(params: Any, n: int, sampling: dict[str, Any]) -> list[SamplingParams]:
    """One SamplingParams per prompt: a list gives each its own; otherwise every prompt gets
    ``params`` and the keywords, with seed s becoming s + i for prompt i."""
    if isinstance(params, (list, tuple)):
        if len(params) != n:
            raise ValueError(f"params: {len(params)} SamplingParams for {n} prompts")
        for i, p in enumerate(params):
            if not isinstance(p, SamplingParams):
                raise TypeError(f"params[{i}] must be a SamplingParams, got {type(p).__name__}")
        return [SamplingParams.build(p, **sampling) for p in params]
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams or a list of them, got {type(params).__name__}")
    base = SamplingParams.build(params, **sampling)
    if base.seed is None:
        return [base] * n
    return [SamplingParams.build(base, seed=base.seed + i) for i in range(n)]


def _check_prompts(prompts: Any) -> list[Any]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of prompts (str or token ids), got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, (str, Sequence)) or isinstance(p, bytes):
            raise TypeError(f"prompts[{i}] must be a str or a sequence of token ids, got {type(p).__name__}")
    return list(prompts)


def generate_batch(engine: Engine, prompts: Sequence[str | Sequence[int]],
                   params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                   max_batch: int = DEFAULT_MAX_BATCH, add_special: bool | None = None,
                   n_threads: int | None = None, json_schema: Any = None, regex: str | None = None,
                   grammar: str | None = None, choices: Sequence[str] | None = None,
                   **sampling: Any) -> list[GenerationResult]:
    """See :meth:`Engine.generate_batch`."""
    items = _check_prompts(prompts)
    plist = _per_prompt_params(params, len(items), sampling)
    max_batch = check_int("max_batch", max_batch, 1, 1024)
    add_special = check_bool("add_special", add_special, optional=True)
    nt = engine.n_threads if n_threads is None else check_threads(n_threads)
    constraint = compile_grammar(engine.tokenizer, engine.config.vocab_size, json_schema=json_schema,
                                 regex=regex, grammar=grammar, choices=choices)
    if not items:
        return []
    width = min(max_batch, len(items))
    sessions = [Session(engine, n_threads=nt) for _ in range(width)]
    ids = [sessions[0]._encode_prompt(p, add_special) for p in items]  # every prompt checked up front
    for i, seq in enumerate(ids):
        try:
            sessions[0]._check_fits(seq)
        except Exception as exc:
            raise type(exc)(f"prompts[{i}]: {exc}") from None
    model = engine.model
    batch = model.new_batch(max_seqs=width, capacity=engine.n_ctx, n_threads=nt)
    results: list[GenerationResult | None] = [None] * len(items)
    running: list[tuple[int, Session, Decoder, int]] = []  # (prompt index, session, decoder, next token)
    free = list(sessions)
    queue = list(range(len(items)))
    try:
        while queue or running:
            while queue and free:  # prefill newcomers alone, exactly as generate does
                i, s = queue.pop(0), free.pop()
                s.reset()
                dec = Decoder(engine, plist[i], ids[i], ids[i], s.capacity, constraint)
                s.tokens.extend(ids[i])
                logits = s._forward(ids[i], None)
                s._check_finite(logits)
                dec.prompt_done()
                _advance(running, free, results, i, s, dec, logits, s._peak)
            if not running:
                continue
            fwd = model.forward_batch(batch, [(s._state, [tok]) for _, s, _, tok in running])
            stepped, running[:] = list(running), []
            for (i, s, dec, tok), logits, peak in zip(stepped, fwd.logits, fwd.peaks, strict=True):
                s.tokens.append(tok)
                _advance(running, free, results, i, s, dec, logits, int(peak))
    finally:
        for _, _, dec, _ in running:
            dec.close()
        batch.close()
        for s in sessions:
            s.close()
    return [r for r in results if r is not None]


def _advance(running: list, free: list, results: list, i: int, s: Session, dec: Decoder,
             logits: np.ndarray, peak: int) -> None:
    """Sample sequence i's next token (``peak``: its logits' peak); it runs on, or ends and
    frees its session."""
    chunk = None if dec.done else dec.step(logits, peak)
    room = s._state.cache.length + 1 <= s._state.cache.capacity
    if chunk is not None and not dec.done and room:
        running.append((i, s, dec, chunk.token))
        return
    dec.finish()
    results[i] = dec.run.result()
    free.append(s)
