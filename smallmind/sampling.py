"""Choosing the next token from a row of logits.

:class:`SamplingParams` says *how* to sample; :class:`Sampler` holds the state that
does it (scratch buffers sized for one vocabulary, and a seeded random generator).
The chain follows llama.cpp's order:

    logit bias -> repetition / presence / frequency penalties -> top-k -> top-p -> min-p
    -> temperature -> draw

so top-p and min-p look at the temperature-1 distribution, and ``temperature=0`` is
greedy decoding (argmax after bias and penalties; ties go to the lowest id, and no
random number is consumed).

>>> import numpy as np
>>> sampler = Sampler(SamplingParams(temperature=0.7, top_k=40, seed=1), vocab_size=256)
>>> token = sampler.sample(np.zeros(256, np.float32), history=[])
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np

from ._core._sampling import SamplerCore
from .errors import SamplingError, SamplingTypeError

__all__ = ["ParamOption", "Sampler", "SamplingError", "SamplingParams"]


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise SamplingTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise SamplingError(f"{name} must not be NaN")
    return value


def _finite(name: str, value: object) -> float:
    value = _real(name, value)
    if math.isinf(value):
        raise SamplingError(f"{name} must be finite, got {value}")
    return value


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise SamplingTypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


#: generate()'s default max_new_tokens, also the command line's -n default.
DEFAULT_MAX_NEW_TOKENS = 128


def _param(default: Any, help: str, **kwargs: Any) -> Any:
    """A field whose ``metadata["help"]`` documents it (the CLI builds its options from it)."""
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class SamplingParams:
    """How to generate: the one definition of the generation parameters.

    ``Session.generate``, ``Engine.generate`` and ``Engine.chat`` take either a
    SamplingParams or its fields as keyword arguments (built with :meth:`build`); the CLI
    derives its options from the fields' ``metadata["help"]`` (see :meth:`help`). A new
    parameter is one new field here. Every field is checked on construction: a wrong type
    is a TypeError, a wrong value a ValueError (both also :class:`SamplingError`).

    max_new_tokens: most tokens to generate; generation also ends at the end of the
        context (``finish_reason="length"``) and keeps what it produced.
    stop: a string or strings; generation ends when the text contains one. The returned
        text ends before it; ``result.tokens`` and the session's context keep the tokens
        that spelled it (the model saw them), see ``Session.generate``.
    temperature: 0 is greedy; otherwise probabilities are ``softmax(logits / temperature)``.
    top_k: keep the k most likely tokens (None or 0: off).
    top_p: keep the smallest most-likely set whose probability reaches top_p, in (0, 1]
        (None or 1: off). Always keeps at least one token.
    min_p: keep tokens whose probability is at least ``min_p`` times the largest, in [0, 1]
        (None or 0: off).
    repetition_penalty: > 0; a token seen in the last ``penalty_last_n`` tokens has a
        positive logit divided by it, a negative one multiplied by it (1: off).
    presence_penalty / frequency_penalty: subtracted from a seen token's logit once /
        once per occurrence in that window (0: off).
    penalty_last_n: how many trailing tokens of the history count for the penalties
        (0: none, so penalties are off; None: the whole history).
    logit_bias: token id -> value added to its logit; ``-math.inf`` bans the token.
    seed: seeds the sampler's own ``numpy.random.Generator(PCG64(seed))``, so equal seeds
        give equal tokens; None draws fresh entropy.
    """

    max_new_tokens: int = _param(DEFAULT_MAX_NEW_TOKENS, "most tokens to generate (generation also stops "
                                      "at the end of the context, with finish_reason 'length')")
    temperature: float = _param(0.8, "sampling temperature; 0 is greedy")
    top_k: int | None = _param(None, "keep the k most likely tokens (0 or None: off)")
    top_p: float | None = _param(None, "nucleus sampling threshold in (0, 1] (None or 1: off)")
    min_p: float | None = _param(None, "drop tokens below min_p x the top probability (None or 0: off)")
    repetition_penalty: float = _param(1.0, "divide the logit of recently seen tokens by this (1: off)")
    presence_penalty: float = _param(0.0, "subtract from the logit of recently seen tokens (0: off)")
    frequency_penalty: float = _param(0.0, "subtract per occurrence of recently seen tokens (0: off)")
    penalty_last_n: int | None = _param(64, "tokens of history the penalties look at "
                                            "(0: none, None: all)")
    # A dict is not hashable; the field is left out of hash() (equal params still hash equal).
    logit_bias: Mapping[int, float] | None = _param(None, "token id -> value added to its logit "
                                                          "(-inf bans it)", hash=False)
    seed: int | None = _param(None, "random seed (None: fresh entropy)")
    stop: str | Sequence[str] | None = _param(None, "stop when the text contains any of these "
                                                    "strings (they are not returned)")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are written this way
        max_new = _integer("max_new_tokens", self.max_new_tokens)
        if max_new < 0:
            raise SamplingError(f"max_new_tokens must be >= 0, got {max_new}")
        set_(self, "max_new_tokens", max_new)
        set_(self, "stop", _stop_strings(self.stop))
        temperature = _finite("temperature", self.temperature)
        if temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {temperature}")
        set_(self, "temperature", temperature)

        if self.top_k is not None:
            top_k = _integer("top_k", self.top_k)
            if top_k < 0:
                raise SamplingError(f"top_k must be >= 0 (0 or None: off), got {top_k}")
            set_(self, "top_k", top_k)
        if self.top_p is not None:
            top_p = _real("top_p", self.top_p)
            if not 0.0 < top_p <= 1.0:
                raise SamplingError(f"top_p must be in (0, 1], got {top_p}")
            set_(self, "top_p", top_p)
        if self.min_p is not None:
            min_p = _real("min_p", self.min_p)
            if not 0.0 <= min_p <= 1.0:
                raise SamplingError(f"min_p must be in [0, 1], got {min_p}")
            set_(self, "min_p", min_p)

        repetition_penalty = _finite("repetition_penalty", self.repetition_penalty)
        if repetition_penalty <= 0:
            raise SamplingError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        set_(self, "repetition_penalty", repetition_penalty)
        set_(self, "presence_penalty", _finite("presence_penalty", self.presence_penalty))
        set_(self, "frequency_penalty", _finite("frequency_penalty", self.frequency_penalty))
        if self.penalty_last_n is not None:
            last_n = _integer("penalty_last_n", self.penalty_last_n)
            if last_n < 0:
                raise SamplingError(
                    f"penalty_last_n must be >= 0 (None: the whole history), got {last_n}")
            set_(self, "penalty_last_n", last_n)

        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, Mapping):
                raise SamplingError(
                    f"logit_bias must be a mapping of token id to bias, got {type(self.logit_bias).__name__}")
            bias: dict[int, float] = {}
            for token, value in self.logit_bias.items():
                token = _integer("logit_bias token id", token)
                if token < 0:
                    raise SamplingError(f"logit_bias token id must be >= 0, got {token}")
                bias[token] = _real(f"logit_bias[{token}]", value)
            set_(self, "logit_bias", MappingProxyType(bias))

        if self.seed is not None:
            seed = _integer("seed", self.seed)
            if seed < 0:
                raise SamplingError(f"seed must be >= 0, got {seed}")
            set_(self, "seed", seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def build(cls, params: SamplingParams | None = None, /, **overrides: Any) -> SamplingParams:
        """``params`` (default: the defaults) with the fields in ``overrides`` replaced;
        an unknown name is a TypeError that suggests the closest field."""
        if params is not None and not isinstance(params, cls):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        names = cls.names()
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"unexpected keyword argument {key!r}{hint}; generation "
                                f"parameters are the fields of SamplingParams")
        base = cls() if params is None else params
        return replace(base, **overrides) if overrides else base

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameter names, in definition order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Parameter name -> one-line help (for CLI options and server schemas)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def options(cls) -> list[ParamOption]:
        """One :class:`ParamOption` per field, derived from its annotation, default and
        help: what a command line (``--top-p 0.9``) or a server schema needs to offer it."""
        hints = get_type_hints(cls)
        out = []
        for f in fields(cls):
            args = [a for a in get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            scalar = next((a for a in (int, float, str) if a in args), None)
            repeated = any(get_origin(a) is Sequence for a in args)
            out.append(ParamOption(f.name, scalar, f.default, f.metadata.get("help", ""),
                                   repeated, type(None) in get_args(hints[f.name])))
        return out


@dataclass(frozen=True)
class ParamOption:
    """How to offer one generation parameter: ``type`` is int, float or str (None: not a
    plain value, e.g. logit_bias's mapping); ``repeated``: may be given several times
    (stop); ``optional``: None is allowed (and means "off" or "the default")."""

    name: str
    type: type | None
    default: Any
    help: str
    repeated: bool = False
    optional: bool = False


def _stop_strings(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, Sequence) or isinstance(items, (bytes, bytearray)):
        raise SamplingTypeError(f"stop must be a string or a sequence of strings, got {stop!r}")
    for s in items:
        if not isinstance(s, str):
            raise SamplingTypeError(f"stop must hold strings, got {s!r}")
        if not s:
            raise SamplingError("stop strings must not be empty")
    return tuple(items)


class Sampler(SamplerCore):
    """Draws token ids for one vocabulary with fixed :class:`SamplingParams`.

    ``sample(logits, history=None) -> int`` takes a contiguous float32 array of shape
    ``(vocab_size,)``; ``history`` (a list or integer array of the ids so far) only matters
    when a penalty is set. Scratch buffers are allocated here, once: steady-state calls
    allocate nothing. A Sampler is not thread-safe; use one per generation stream.
    ``rng`` is its ``numpy.random.Generator``.
    """

    def __init__(self, params: SamplingParams | None = None, vocab_size: int | None = None):
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        if vocab_size is None:
            raise TypeError("Sampler() needs vocab_size")
        vocab_size = _integer("vocab_size", vocab_size)
        if vocab_size < 1:
            raise SamplingError(f"vocab_size must be >= 1, got {vocab_size}")
        bias = params.logit_bias or {}
        for token in bias:
            if token >= vocab_size:
                raise SamplingError(
                    f"logit_bias token id {token} is outside the vocabulary (vocab_size={vocab_size})")
        self.params = params
        self._configure(
            vocab_size,
            params.temperature,
            min(params.top_k or 0, vocab_size),  # k >= vocab keeps all: the same thing
            1.0 if params.top_p is None else params.top_p,
            params.min_p or 0.0,
            params.repetition_penalty,
            params.presence_penalty,
            params.frequency_penalty,
            # A window longer than any history is the whole history (and fits a C integer).
            -1 if params.penalty_last_n is None or params.penalty_last_n >= 2**31
            else params.penalty_last_n,
            np.fromiter(bias.keys(), dtype=np.int32, count=len(bias)),
            np.fromiter(bias.values(), dtype=np.float32, count=len(bias)),
            np.random.Generator(np.random.PCG64(params.seed)),
        )

    def __repr__(self) -> str:
        return f"Sampler({self.params!r}, vocab_size={self.vocab_size})"
