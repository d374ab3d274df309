"""Argument checks shared by the public entry points: strict types, the parameter named.

Wrong types raise ``TypeError``, wrong values ``ValueError``; nothing is coerced (a bool
is not an integer here, a float is never truncated to a token id).
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np

from .errors import TokenizerError


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_bool(name: str, value: object, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def token_ids(name: str, ids: object, vocab_size: int) -> list[int]:
    """A list of token ids from a sequence or 1-D integer array, each in [0, vocab_size)."""
    if isinstance(ids, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be text (str) or a sequence of token ids, "
                        f"got {type(ids).__name__}")
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must be a 1-D integer array, got dtype {ids.dtype} "
                            f"and shape {ids.shape}")
        items: Sequence[object] = ids.tolist()
    elif isinstance(ids, Sequence):
        items = ids
    else:
        raise TypeError(f"{name} must be text (str) or a sequence of token ids, "
                        f"got {type(ids).__name__}")
    out = []
    for i in items:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, Integral):
            raise TypeError(f"{name} must hold integer token ids, got {i!r}")
        i = int(i)
        if not 0 <= i < vocab_size:
            raise TokenizerError(f"{name}: token id {i} is outside the vocabulary [0, {vocab_size})")
        out.append(i)
    return out
