"""The public entry point: :class:`Engine` (a loaded model + tokenizer) and :class:`Session`."""
from __future__ import annotations

import codecs
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, overload

import numpy as np

from .errors import ContextOverflowError, SmallMindError, TokenizerError
from .models import build_model
from .models.base import DecoderModel, State
from .models.config import ModelConfig
from .sampling import Sampler, SamplingParams
from .structured import Grammar, compile_grammar
from .tokenizers import ByteTokenizer, Tokenizer

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default.gguf"


@dataclass(frozen=True)
class Timings:
    """Wall-clock figures of one generate call.

    ``prompt_ms`` covers the prefill forward pass; ``ttft_ms`` runs from the call to the first
    sampled token; ``decode_ms`` covers every later token (forward pass + sampling).
    """

    prompt_ms: float
    decode_ms: float
    prompt_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_ms: float
    prompt_tokens: int = 0
    decode_tokens: int = 0


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    prompt_tokens: list[int]
    finish_reason: str  # "length" | "stop" | "eos"
    timings: Timings
    profile: Any = None
    #: The parsed value of a complete ``json_schema``-constrained output (else None).
    json: Any = None
    #: OpenAI-style tool calls of a ``chat(..., tools=...)`` reply (else None).
    tool_calls: list[dict] | None = None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TokenChunk:
    """One streamed token and the text it completes.

    ``text`` may be "" while a multi-byte character or a possible stop string is pending;
    held-back text that turns out to be final arrives in a last chunk whose token is None.
    """

    token: int | None
    text: str


@dataclass
class _Run:
    """Book-keeping of one generate call, filled in while it streams."""

    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str = "length"
    timings: Timings | None = None
    profile: Any = None
    json: Any = None


class _TextAssembler:
    """Bytes of tokens -> text chunks: never splits a UTF-8 character, honours stop strings
    across token boundaries by holding back any tail that could start one."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str], strip_leading_space: bool):
        self._tok = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._pending = ""
        self._strip = strip_leading_space
        self._special = tokenizer.special_ids()
        self.stopped = False

    def feed(self, token: int) -> str:
        if token in self._special:
            return ""
        piece = self._decoder.decode(self._tok.token_bytes(token))
        if self._strip and piece:
            if piece.startswith(" "):
                piece = piece[1:]
            self._strip = False
        return self._emit(piece, final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        return self._emit(self._decoder.decode(b"", final=True), final=True)

    def _emit(self, piece: str, final: bool) -> str:
        text = self._pending + piece
        if not self._stop:
            self._pending = ""
            return text
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        keep = 0 if final else self._partial_stop_len(text)
        self._pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest tail of text that is a proper prefix of a stop string."""
        for n in range(min(self._hold, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0


class TokenStream:
    """Iterator of :class:`TokenChunk` returned by ``generate(stream=True)``; once exhausted,
    ``.result`` holds the same :class:`GenerationResult` a non-streaming call returns."""

    def __init__(self, chunks: Iterator[TokenChunk], run: _Run):
        self._chunks = chunks
        self._run = run
        self.result: GenerationResult | None = None

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> TokenChunk:
        try:
            return next(self._chunks)
        except StopIteration:
            run = self._run
            if self.result is None and run.timings is not None:
                self.result = GenerationResult("".join(run.text), run.tokens, run.prompt_tokens,
                                               run.finish_reason, run.timings, run.profile, run.json)
            raise


class Session:
    """A conversation with its own KV cache.

    Successive :meth:`generate` calls continue from the cached state: only tokens not yet
    in the cache are run through the model.
    """

    def __init__(self, engine: "Engine", *, overflow: str = "error", n_keep: int = 0,
                 n_threads: int | None = None, n_ctx: int | None = None):
        if overflow not in ("error", "shift"):
            raise ValueError(f"overflow must be 'error' or 'shift', got {overflow!r}")
        self.engine = engine
        self.overflow = overflow
        self.n_keep = int(n_keep)
        self._state: State = engine.model.new_state(
            capacity=n_ctx or engine.n_ctx, n_threads=n_threads or engine.n_threads,
            overflow=overflow, n_keep=self.n_keep, on_shift=self._on_shift)
        #: Every token of the conversation so far; the cache holds a prefix of them.
        self.tokens: list[int] = []
        #: True from a generate call until its tokens are all produced (or it fails).
        self.busy = False
        self._history = np.zeros(self._state.cache.capacity + 1, dtype=np.int32)

    @property
    def capacity(self) -> int:
        return self._state.cache.capacity

    def reset(self) -> None:
        """Forget the conversation (keeps the buffers)."""
        self._state.cache.reset()
        self.tokens = []

    def continue_with(self, ids: Sequence[int]) -> list[int]:
        """Make the conversation a prefix of ``ids`` and return the tokens still to run.

        Keeps the longest common prefix of the cached conversation and ``ids`` (so a chat
        re-rendered each turn only prefills its new part) and drops the rest. At least one
        token is always returned, since the model needs an input to produce logits.
        """
        ids = [int(i) for i in ids]
        common = 0
        for a, b in zip(self.tokens, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        del self.tokens[common:]
        if self._state.cache.length > common:
            self._state.cache.truncate(common)
        return ids[common:]

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None  # type: ignore[assignment]  # closed: generate() refuses

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # release pooled buffers if the user forgot close()
        try:
            self.close()
        except Exception:
            pass

    # -- generation ---------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int] = "", *, max_new_tokens: int = 128,
                 temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: dict[int, float] | None = None, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, stream: bool = False,
                 profile: bool = False, add_special: bool | None = None,
                 n_threads: int | None = None, json_schema: Any = None, regex: str | None = None,
                 grammar: str | None = None,
                 choices: Sequence[str] | None = None) -> GenerationResult | TokenStream:
        """Continue the conversation with ``prompt`` and sample up to ``max_new_tokens``.

        ``prompt`` is text (encoded with the model's tokenizer; BOS is added at the start of a
        conversation when the model asks for it) or token ids. Returns a
        :class:`GenerationResult`, or with ``stream=True`` an iterator of :class:`TokenChunk`
        whose texts join to the same text. ``n_threads`` overrides the session's thread
        count from this call on.

        ``json_schema`` (dict or JSON text), ``regex``, ``grammar`` (Lark) or ``choices`` (a
        list of strings) constrain the output (the ``structured`` extra): it stops, with
        finish_reason "stop", once the constraint is complete, and ``result.json`` holds
        the parsed value of a JSON-schema output.
        """
        if self._state is None:
            raise SmallMindError("this session is closed")
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty,
                                presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, logit_bias=logit_bias,
                                seed=seed)
        if int(max_new_tokens) < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        constraint = compile_grammar(self.engine.tokenizer, self.engine.config.vocab_size,
                                     json_schema=json_schema, regex=regex, grammar=grammar,
                                     choices=choices)
        if n_threads is not None:
            if int(n_threads) < 1:
                raise ValueError(f"n_threads must be >= 1, got {n_threads}")
            self._state.n_threads = int(n_threads)
        prompt_ids = self._encode_prompt(prompt, add_special)
        run = _Run(prompt_tokens=prompt_ids)
        self.busy = True
        chunks = TokenStream(self._stream(run, params, int(max_new_tokens), stops, profile,
                                          constraint), run)
        if stream:
            return chunks
        for _ in chunks:
            pass
        assert chunks.result is not None
        return chunks.result

    def _encode_prompt(self, prompt: str | Sequence[int], add_special: bool | None) -> list[int]:
        tok = self.engine.tokenizer
        if isinstance(prompt, str):
            if tok is None:
                raise SmallMindError("this model has no tokenizer: pass token ids, not text")
            if add_special is None and self.tokens:
                add_special = False  # BOS only at the start of a conversation
            ids = tok.encode(prompt, add_special=add_special)
        else:
            ids = [int(i) for i in prompt]
        vocab = self.engine.config.vocab_size
        for i in ids:
            if not 0 <= i < vocab:
                raise TokenizerError(f"token id {i} is outside the vocabulary [0, {vocab})")
        if not ids and not self.tokens:
            bos = tok.bos_id if tok is not None else None
            if bos is None:
                raise ValueError("the prompt is empty and this model has no BOS token to start from")
            ids = [bos]
        return ids

    def _on_shift(self, start: int, count: int, delta: int) -> None:
        """The cache slid its window (overflow='shift'): drop the discarded tokens here too."""
        del self.tokens[start:start - delta]

    def _forward(self, ids: Sequence[int], profiler) -> np.ndarray:
        return self.engine.model.forward(self._state, ids, profiler=profiler)

    def _stream(self, run: _Run, params: SamplingParams, max_new: int, stops: list[str],
                profile: bool, grammar: Grammar | None = None) -> Iterator[TokenChunk]:
        from .profiler import current_profiler, profile as profile_ctx
        engine = self.engine
        tok = engine.tokenizer or ByteTokenizer()
        sampler = Sampler(params, engine.config.vocab_size)
        stop_ids = tok.stop_ids() if engine.tokenizer is not None else frozenset()
        ctx = profile_ctx() if profile else None
        profiler = ctx.__enter__() if ctx is not None else current_profiler()
        t_start = time.perf_counter_ns()
        constraint = grammar.start() if grammar is not None else None
        try:
            cache = self._state.cache
            if cache.length > len(self.tokens):  # the cache outran a truncated history
                cache.truncate(len(self.tokens))
            pending = self.tokens[cache.length:] + run.prompt_tokens
            self.tokens.extend(run.prompt_tokens)
            hist = self._history
            strip = tok.add_space_prefix and (self.tokens[-1:] == [tok.bos_id])
            text = _TextAssembler(tok, stops, strip)
            if constraint is not None:
                constraint.start()  # the first mask is computed while the prompt runs
            logits = self._forward(pending, profiler) if pending else None
            t_prompt = time.perf_counter_ns()
            t_first = t_prompt
            n_hist = -1
            for i in range(max_new):
                if n_hist != len(self.tokens):  # first step, or the cache slid: resync
                    n_hist = min(len(self.tokens), hist.shape[0] - 1)
                    hist[:n_hist] = self.tokens[len(self.tokens) - n_hist:]
                if constraint is not None:
                    constraint.apply(logits)
                if profiler is None:
                    token = sampler.sample(logits, hist[:n_hist])
                else:
                    with profiler.span("sampling", tokens=1):
                        token = sampler.sample(logits, hist[:n_hist])
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
                piece = text.feed(token)
                run.text.append(piece)
                yield TokenChunk(token, piece)
                if text.stopped or complete:
                    run.finish_reason = "stop"
                    break
                if i + 1 < max_new:
                    logits = self._forward([token], profiler)
            tail = text.finish()
            if tail:
                run.text.append(tail)
                yield TokenChunk(None, tail)
            t_end = time.perf_counter_ns()
            n_prompt, n_dec = len(pending), len(run.tokens)
            prompt_s = (t_prompt - t_start) / 1e9
            decode_s = (t_end - t_first) / 1e9
            run.timings = Timings(
                prompt_ms=prompt_s * 1e3, decode_ms=decode_s * 1e3,
                prompt_tokens_per_s=n_prompt / prompt_s if prompt_s > 0 else 0.0,
                decode_tokens_per_s=(n_dec - 1) / decode_s if n_dec > 1 and decode_s > 0 else 0.0,
                ttft_ms=(t_first - t_start) / 1e6, prompt_tokens=n_prompt, decode_tokens=n_dec)
            if constraint is not None and run.finish_reason == "stop" and not text.stopped:
                run.json = constraint.value("".join(run.text))  # complete, not cut by `stop`
        finally:
            self.busy = False
            if constraint is not None:
                constraint.close()
            if ctx is not None:
                ctx.__exit__(None, None, None)
                run.profile = profiler


class Engine:
    """A model and its tokenizer, ready to generate.

    Build one with :meth:`load` (a GGUF or llama2.c file), :meth:`default` (the embedded
    Shakespeare model) or :meth:`from_config` (random weights, for experiments and tests).
    """

    def __init__(self, model: DecoderModel, tokenizer: Tokenizer | None, *, n_threads: int = 1,
                 n_ctx: int | None = None, chat_template: str | None = None,
                 source: str | None = None, metadata: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.n_threads = max(1, int(n_threads))
        self.n_ctx = min(n_ctx or model.config.n_ctx, model.config.n_ctx)
        self.chat_template = chat_template
        self.source = source
        self.metadata = metadata or {}
        self._session: Session | None = None
        self._lock = threading.Lock()

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def __repr__(self) -> str:
        c = self.config
        return (f"Engine({c.arch}, {c.n_params():,} params, vocab {c.vocab_size}, "
                f"ctx {self.n_ctx}, source={self.source!r})")

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 42, *,
                    tokenizer: Tokenizer | None = None, n_threads: int = 1) -> "Engine":
        """A model of ``config`` with random weights: N(0, 0.02) for every matrix, embedding
        and bias; norm weights 1 and norm biases 0. Same seed, same weights."""
        from .models.init import random_tensors
        model = build_model(config, random_tensors(config, seed))
        if tokenizer is None and config.vocab_size == 256:
            tokenizer = ByteTokenizer()
        return cls(model, tokenizer, n_threads=n_threads, source=f"random(seed={seed})")

    @classmethod
    def default(cls, *, n_threads: int = 1) -> "Engine":
        """The embedded default model (a byte-level GPT trained on Shakespeare)."""
        return cls.load(DEFAULT_MODEL, n_threads=n_threads)

    @classmethod
    def load(cls, path: str | os.PathLike, *, tokenizer: str | os.PathLike | Tokenizer | None = None,
             n_threads: int | None = None, n_ctx: int | None = None) -> "Engine":
        """Load a GGUF file or a llama2.c ``.bin`` (format detected from the contents)."""
        from .formats.loader import load_model
        loaded = load_model(path, tokenizer=tokenizer, n_ctx=n_ctx)
        model = build_model(loaded.config, loaded.tensors)
        if n_threads is None:
            n_threads = default_threads(loaded.config)
        return cls(model, loaded.tokenizer, n_threads=n_threads, n_ctx=n_ctx,
                   chat_template=loaded.chat_template, source=str(path),
                   metadata=loaded.metadata)

    # -- use ------------------------------------------------------------------------------
    def session(self, *, overflow: str = "error", n_keep: int = 0,
                n_threads: int | None = None) -> Session:
        """A new conversation with its own KV cache (see :class:`Session`)."""
        return Session(self, overflow=overflow, n_keep=n_keep, n_threads=n_threads)

    @overload
    def generate(self, prompt: str | Sequence[int] = ..., *, stream: Literal[False] = ...,
                 **kwargs: Any) -> GenerationResult: ...

    @overload
    def generate(self, prompt: str | Sequence[int] = ..., *, stream: Literal[True],
                 **kwargs: Any) -> TokenStream: ...

    def generate(self, prompt: str | Sequence[int] = "", **kwargs: Any) -> GenerationResult | TokenStream:
        """Generate from a fresh context. Keyword arguments are those of :meth:`Session.generate`."""
        session = self._reusable_session()
        session.reset()
        try:
            return session.generate(prompt, **kwargs)
        except BaseException:
            session.busy = False  # rejected before it started: free for the next call
            raise

    def _reusable_session(self) -> Session:
        # One cached session makes repeated generate calls allocation-free; a caller that
        # finds it busy (another thread, or a stream not yet exhausted) gets its own.
        with self._lock:
            if self._session is None:
                self._session = Session(self)
            elif self._session.busy:
                return Session(self)
            self._session.busy = True  # claimed until its generate call finishes
            return self._session

    def logits(self, tokens: Sequence[int], *, n_threads: int | None = None) -> np.ndarray:
        """Logits of every position of ``tokens``: float32 (len(tokens), vocab)."""
        ids = list(tokens) if not isinstance(tokens, str) else None
        if ids is None:
            raise TypeError("logits() takes token ids; use engine.tokenizer.encode(text)")
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
        out = np.empty((len(ids), self.config.vocab_size), dtype=np.float32)
        with Session(self, n_threads=n_threads) as s:
            s._encode_prompt(ids, None)  # range-checks the ids
            self.model.forward(s._state, ids, all_logits=out)
        return out

    def chat(self, messages: list[dict], *, tools: list[dict] | None = None, tool_choice: Any = None,
             **kwargs) -> GenerationResult:
        """Answer the conversation ``messages`` ([{"role": ..., "content": ...}]) using the
        model's chat template; stops at end-of-turn.

        ``tools`` (OpenAI function tools) and ``tool_choice`` ("auto", "required", "none" or
        {"type": "function", "function": {"name": ...}}) let the reply be a tool call, returned
        in ``result.tool_calls`` (see :mod:`smallmind.structured.tools`).
        """
        from .chat import chat_stop_strings, encode_chat
        plan = None
        if tools is not None or tool_choice is not None:
            from .structured.tools import ToolPlan
            plan = ToolPlan(self.chat_template, messages, tools, tool_choice, kwargs)
            messages = plan.messages
            kwargs.update(plan.constraint)
        ids = encode_chat(self, messages, tools=plan.template_tools if plan else None)
        kwargs["stop"] = list(kwargs.get("stop") or []) + chat_stop_strings(self)
        result = self.generate(ids, **kwargs)
        if plan is None:
            return result
        return plan.stream(result) if kwargs.get("stream") else plan.finish(result)


def default_threads(config: ModelConfig) -> int:
    """Threads that decode fastest: one for tiny models (threads only add overhead there),
    every core for models with large matrices (measured in benchmarks/compare.py)."""
    big = config.n_embd * config.n_hidden >= 256 * 1024
    return min(os.cpu_count() or 1, 4) if big else 1
