"""The public entry point: :class:`Engine`, a loaded model and its tokenizer.

Conversations live in :class:`~smallmind.session.Session`; results in
:mod:`smallmind.results`. Both are re-exported here and from ``smallmind``.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np

from ._checks import check_int, token_ids
from ._threads import check_threads, default_threads, resolve_threads
from .errors import ContextOverflowError, SmallMindError, TokenizerError
from .models import build_model
from .models.base import DecoderModel
from .models.config import ModelConfig
from .results import GenerationResult, Timings, TokenChunk, TokenStream
from .sampling import SamplingParams
from .session import Session
from .tokenizers import ByteTokenizer, Tokenizer

__all__ = [
    "DEFAULT_MAX_CTX",
    "DEFAULT_MODEL",
    "Engine",
    "GenerationResult",
    "Session",
    "Timings",
    "TokenChunk",
    "TokenStream",
    "default_threads",
]

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default.gguf"
#: The context an engine uses unless ``n_ctx=`` asks for more: min(trained, this).
DEFAULT_MAX_CTX = 8192


class Engine:
    """A model and its tokenizer, ready to generate.

    Build one with :meth:`load` (a GGUF or llama2.c file), :meth:`default` (the embedded
    Shakespeare model) or :meth:`from_config` (random weights, for experiments and tests).

    ``n_ctx`` is the context of each session: by default the trained context capped at
    :data:`DEFAULT_MAX_CTX` (8192); pass ``n_ctx=`` to :meth:`load` to use more. A context
    whose KV cache would need more than half the machine's memory is refused up front.

    :meth:`generate` is thread-safe: each concurrent caller gets a session of its own (one
    cached session is reused while it is free), so results equal those of sequential calls.
    A :class:`Session` serves one call at a time.
    """

    def __init__(self, model: DecoderModel, tokenizer: Tokenizer | None, *,
                 n_threads: int | None = None, n_ctx: int | None = None,
                 chat_template: str | None = None, source: str | None = None,
                 metadata: dict[str, Any] | None = None):
        config = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.n_threads = resolve_threads(n_threads, config)
        if n_ctx is None:
            self.n_ctx = min(config.n_ctx, DEFAULT_MAX_CTX)
        else:
            self.n_ctx = check_int("n_ctx", n_ctx, 1, config.n_ctx)
        _check_cache_memory(config, self.n_ctx)
        self.chat_template = chat_template
        self.source = source
        self.metadata = metadata or {}
        self._session: Session | None = None
        self._session_claimed = False
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
                    tokenizer: Tokenizer | None = None, n_threads: int | None = None) -> Engine:
        """A model of ``config`` with random weights: N(0, 0.02) for every matrix, embedding
        and bias; norm weights 1 and norm biases 0. Same seed, same weights. Without a
        tokenizer (vocabularies other than 256 bytes) it works on token ids only."""
        from .models.init import random_tensors
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        check_int("seed", seed, 0)
        model = build_model(config, random_tensors(config, seed))
        if tokenizer is None and config.vocab_size == 256:
            tokenizer = ByteTokenizer()
        return cls(model, tokenizer, n_threads=n_threads, source=f"random(seed={seed})")

    @classmethod
    def default(cls, *, n_threads: int | None = None) -> Engine:
        """The embedded default model (a byte-level GPT trained on Shakespeare)."""
        return cls.load(DEFAULT_MODEL, n_threads=n_threads)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *,
             tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
             n_threads: int | None = None, n_ctx: int | None = None) -> Engine:
        """Load a GGUF file or a llama2.c ``.bin`` (format detected from the contents).

        ``tokenizer`` replaces the model's own (a Tokenizer or a llama2.c ``tokenizer.bin``);
        a model without a usable tokenizer is refused with :class:`TokenizerError`.
        """
        from .formats.loader import load_model
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike, Tokenizer)):
            raise TypeError(f"tokenizer must be a path or a Tokenizer, got {type(tokenizer).__name__}")
        if n_threads is not None:
            check_threads(n_threads)
        if n_ctx is not None:
            check_int("n_ctx", n_ctx, 1)
        loaded = load_model(path, tokenizer=tokenizer, n_ctx=n_ctx)
        if loaded.tokenizer is None:
            raise TokenizerError(
                f"{path}: the model has no tokenizer (a GGUF without tokenizer.ggml.* keys, or a "
                f"llama2.c file without tokenizer.bin / tok{loaded.config.vocab_size}.bin beside "
                f"it); pass tokenizer=PATH")
        if loaded.tokenizer.vocab_size != loaded.config.vocab_size:  # llama.cpp's rule too
            raise TokenizerError(f"{path}: the tokenizer has {loaded.tokenizer.vocab_size} tokens "
                                 f"but the model {loaded.config.vocab_size}")
        _check_tokenizer(loaded.tokenizer, path)
        model = build_model(loaded.config, loaded.tensors)
        loaded.release_pages()
        return cls(model, loaded.tokenizer, n_threads=n_threads, n_ctx=n_ctx,
                   chat_template=loaded.chat_template, source=str(path),
                   metadata=loaded.metadata)

    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, *, revision: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None, **load_kwargs: Any) -> Engine:
        """Load ``filename`` (a path or a glob such as ``"*Q4_1.gguf"``) of the Hugging Face model
        repository ``repo_id``, through huggingface_hub's cache (:func:`smallmind.hub.download`);
        ``load_kwargs`` are those of :meth:`load`."""
        from .hub import download
        return cls.load(download(repo_id, filename, revision=revision, cache_dir=cache_dir), **load_kwargs)

    # -- use ------------------------------------------------------------------------------
    def session(self, *, overflow: str = "error", n_keep: int = 0,
                n_threads: int | None = None) -> Session:
        """A new conversation with its own KV cache (see :class:`Session`)."""
        return Session(self, overflow=overflow, n_keep=n_keep, n_threads=n_threads)

    @overload
    def generate(self, prompt: str | Sequence[int] = ..., params: SamplingParams | None = ..., *,
                 stream: Literal[False] = ..., **kwargs: Any) -> GenerationResult: ...

    @overload
    def generate(self, prompt: str | Sequence[int] = ..., params: SamplingParams | None = ..., *,
                 stream: Literal[True], **kwargs: Any) -> TokenStream: ...

    def generate(self, prompt: str | Sequence[int] = "", params: SamplingParams | None = None,
                 **kwargs: Any) -> GenerationResult | TokenStream:
        """Generate from a fresh context. Arguments are those of :meth:`Session.generate`;
        safe to call from several threads at once."""
        session = self._claim_session()
        try:
            session.reset()
            result: GenerationResult | TokenStream = session.generate(prompt, params, **kwargs)
            if isinstance(result, TokenStream):
                result._engine = self  # the cached session's engine is a weak proxy (see below)
            return result
        finally:
            self._release_session(session)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]],
                       params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                       max_batch: int = 16, **kwargs: Any) -> list[GenerationResult]:
        """Generate from each of ``prompts`` (texts or token-id lists), decoding up to
        ``max_batch`` sequences together: each step runs one token of every sequence
        through the weights at once, and a prompt waiting for room joins when a sequence
        finishes. Returns one :class:`GenerationResult` per prompt, in order.

        Sampling: ``params`` (one :class:`SamplingParams` for all, or a list with one per
        prompt) and/or its fields as keywords, as :meth:`generate`. With one ``seed=s`` for
        all, prompt i samples with seed ``s + i``; so result i is, token for token, what
        ``generate(prompts[i], seed=s + i)`` returns (with a list, what ``generate`` with
        that prompt's own parameters returns). ``add_special``, ``n_threads`` and the
        constraints ``json_schema``, ``regex``, ``grammar``, ``choices`` (each sequence held
        to it separately) are those of :meth:`generate`.
        """
        from .batch import generate_batch
        return generate_batch(self, prompts, params, max_batch=max_batch, **kwargs)

    def _claim_session(self) -> Session:
        # One cached session makes repeated generate calls allocation-free; a caller that
        # finds it claimed (another thread, or a stream not yet exhausted) gets its own.
        with self._lock:
            if self._session is None:
                # The session reaches its engine through a weak proxy: a strong reference back
                # would make a cycle, and the engine (its model, buffers, memory map) would
                # live on until the garbage collector found it.
                self._session = Session(cast("Engine", weakref.proxy(self)))
            elif self._session_claimed or self._session.busy:
                return Session(self)
            self._session_claimed = True
            return self._session

    def _release_session(self, session: Session) -> None:
        with self._lock:
            if session is self._session:
                self._session_claimed = False

    def logits(self, tokens: Sequence[int], *, n_threads: int | None = None) -> np.ndarray:
        """Logits of every position of ``tokens``: float32 (len(tokens), vocab)."""
        ids = token_ids("tokens", tokens, self.config.vocab_size)
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"prompt is {len(ids)} tokens, context is {self.n_ctx}")
        out = np.empty((len(ids), self.config.vocab_size), dtype=np.float32)
        with Session(self, n_threads=n_threads) as s:
            self.model.forward(s._state, ids, all_logits=out)
        return out

    def chat(self, messages: list[dict[str, Any]], params: SamplingParams | None = None, *,
             tools: list[dict[str, Any]] | None = None, tool_choice: Any = None,
             **kwargs: Any) -> GenerationResult | TokenStream:
        """Answer the conversation ``messages`` ([{"role": ..., "content": ...}]) using the
        model's chat template; stops at end-of-turn. Arguments as :meth:`generate`.

        ``tools`` (OpenAI function tools) and ``tool_choice`` ("auto", "required", "none" or
        {"type": "function", "function": {"name": ...}}) let the reply be a tool call, returned
        in ``result.tool_calls`` (see :mod:`smallmind.structured.tools`).
        """
        from .chat import chat_stop_strings, encode_chat
        if self.tokenizer is None:
            raise SmallMindError("chat needs a model with a tokenizer")
        plan = None
        if tools is not None or tool_choice is not None:
            from .structured.tools import ToolPlan
            plan = ToolPlan(self.chat_template, messages, tools, tool_choice, kwargs)
            messages = plan.messages
            kwargs.update(plan.constraint)
        names = SamplingParams.names()
        p = SamplingParams.build(params, **{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        p = SamplingParams.build(p, stop=[*(p.stop or ()), *chat_stop_strings(self.chat_template)])
        ids = encode_chat(messages, self.tokenizer, self.chat_template,
                          tools=plan.template_tools if plan else None)
        result: GenerationResult | TokenStream = self.generate(ids, p, **kwargs)
        if plan is None:
            return result
        return plan.stream(result) if isinstance(result, TokenStream) else plan.finish(result)


def _check_tokenizer(tokenizer: Tokenizer, path: object) -> None:
    """Encode and decode a probe so a damaged tokenizer fails at load, not mid-generation."""
    try:
        ids = tokenizer.encode("Hello, world! 123 \u00e9", add_special=False)
        tokenizer.decode_bytes(ids)
    except SmallMindError:
        raise
    except Exception as exc:  # any failure here means the vocabulary data is unusable
        raise TokenizerError(f"{path}: the model's tokenizer is unusable ({exc!r})") from exc


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 << 30


def _check_cache_memory(config: ModelConfig, n_ctx: int) -> None:
    kv_bytes = 2 * 4 * config.n_layer * config.n_kv_head * config.head_dim * n_ctx
    limit = _physical_memory() // 2
    if kv_bytes > limit:
        raise ContextOverflowError(
            f"n_ctx={n_ctx} needs {kv_bytes:,} bytes of KV cache per session, more than half of "
            f"this machine's memory ({limit:,} bytes); pass a smaller n_ctx")
