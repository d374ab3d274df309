"""What a generate call returns: :class:`GenerationResult`, or a :class:`TokenStream` of
:class:`TokenChunk` whose ``result`` is the same once exhausted."""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import StaleStreamError

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session


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
    tool_calls: list[dict[str, Any]] | None = None

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

    def result(self) -> GenerationResult:
        assert self.timings is not None
        return GenerationResult("".join(self.text), self.tokens, self.prompt_tokens,
                                self.finish_reason, self.timings, self.profile, self.json)


class TokenStream:
    """Iterator of :class:`TokenChunk` returned by ``generate(stream=True)``; once exhausted,
    ``.result`` holds the same :class:`GenerationResult` a non-streaming call returns.

    The stream runs on its session: each ``next()`` holds the session for one step (a
    concurrent call on the session meanwhile gets :class:`~smallmind.errors.SessionBusyError`).
    Once the session has started another call, resuming raises
    :class:`~smallmind.errors.StaleStreamError`; the session keeps the tokens this stream
    had produced up to then. ``close()`` ends it early.
    """

    def __init__(self, session: Session, chunks: Generator[TokenChunk, None, None], run: _Run,
                 epoch: int):
        self._session = session
        self._chunks = chunks
        self._run = run
        self._epoch = epoch
        self._engine: object = None  # keeps an engine alive while its cached session streams
        self.result: GenerationResult | None = None

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> TokenChunk:
        if self.result is not None:
            raise StopIteration
        session = self._session
        with session._claim():
            if session._epoch != self._epoch:
                self._chunks.close()
                raise StaleStreamError("this stream's session has started another generate call "
                                       "since; the stream cannot be resumed")
            try:
                return next(self._chunks)
            except StopIteration:
                session._stream_done(self._epoch)
                if self._run.timings is not None:
                    self.result = self._run.result()
                raise

    def close(self) -> None:
        """Stop generating; the session keeps what the stream produced so far."""
        session = self._session
        with session._claim():
            if session._epoch == self._epoch:
                self._chunks.close()
                session._stream_done(self._epoch)
