"""Build a tokenizer from GGUF metadata (``tokenizer.ggml.*``), with llama.cpp's defaults."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from ..errors import TokenizerError, UnsupportedModelError
from .base import Tokenizer
from .bpe import BPETokenizer
from .sentencepiece import SentencePieceTokenizer

__all__ = ["from_gguf_metadata"]

_P = "tokenizer.ggml."


def _str_list(md: Mapping[str, Any], key: str, required: bool) -> Sequence[str] | None:
    value = md.get(key)
    if value is None:
        if required:
            raise TokenizerError(f"GGUF metadata lacks {key}")
        return None
    if not isinstance(value, (list, tuple)) or not all(map(isinstance, value, repeat(str))):
        raise TokenizerError(f"{key} must be an array of strings")
    return value    # the tokenizers copy what they keep


def _num_array(md: Mapping[str, Any], key: str, n: int, dtype: type) -> np.ndarray | None:
    """The first ``n`` entries of a numeric array (a list, or the reader's numpy view of a
    long one) as one compact array: no Python number per token."""
    value = md.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise TokenizerError(f"{key} must be an array, not {type(value).__name__}")
    if len(value) < n:
        raise TokenizerError(f"{key} has {len(value)} entries for {n} tokens")
    try:
        values: np.ndarray = np.asarray(value[:n], dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise TokenizerError(f"{key} must hold numbers") from None
    if values.ndim != 1:
        raise TokenizerError(f"{key} must be a flat array of numbers")
    return values


def _flag(md: Mapping[str, Any], name: str, default: bool) -> bool:
    value = md.get(_P + name, default)
    if not isinstance(value, (bool, int)):
        raise TokenizerError(f"{_P + name} must be a bool, not {type(value).__name__}")
    return bool(value)


def _token_id(md: Mapping[str, Any], name: str, default: int | None, n: int) -> int | None:
    """llama.cpp: a default outside the vocabulary is dropped; a file value outside it
    is ignored in favour of the default."""
    if default is not None and not 0 <= default < n:
        default = None
    value = md.get(_P + name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenizerError(f"{_P + name} must be an integer, not {type(value).__name__}")
    return value if 0 <= value < n else default


def _fim_ids(md: Mapping[str, Any], n: int) -> dict[str, int | None]:
    ids = {}
    for role, old in (("pre", "prefix"), ("suf", "suffix"), ("mid", "middle"),
                      ("pad", None), ("rep", None), ("sep", None)):
        value = _token_id(md, f"fim_{role}_token_id", None, n)
        if value is None and old is not None:
            value = _token_id(md, f"{old}_token_id", None, n)    # deprecated spelling
        ids[role] = value
    return ids


def from_gguf_metadata(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF file describes: SentencePiece (``model = "llama"``) or
    byte-level BPE (``"gpt2"``)."""
    model = metadata.get(_P + "model")
    if model is None:
        raise TokenizerError(f"GGUF metadata lacks {_P}model")
    tokens = _str_list(metadata, _P + "tokens", required=True)
    assert tokens is not None
    n = len(tokens)
    types = _num_array(metadata, _P + "token_type", n, np.int64)
    if model == "llama":
        scores = _num_array(metadata, _P + "scores", n, np.float64)
        return SentencePieceTokenizer(
            tokens, scores, types,
            bos_id=_token_id(metadata, "bos_token_id", 1, n),
            eos_id=_token_id(metadata, "eos_token_id", 2, n),
            unk_id=_token_id(metadata, "unknown_token_id", 0, n),
            pad_id=_token_id(metadata, "padding_token_id", None, n),
            eot_id=_token_id(metadata, "eot_token_id", None, n),
            eom_id=_token_id(metadata, "eom_token_id", None, n),
            add_bos=_flag(metadata, "add_bos_token", True),
            add_eos=_flag(metadata, "add_eos_token", False),
            add_space_prefix=_flag(metadata, "add_space_prefix", True),
            fim_ids=_fim_ids(metadata, n))
    if model == "gpt2":
        merges = _str_list(metadata, _P + "merges", required=True)
        assert merges is not None
        pre = metadata.get(_P + "pre", "default")
        if not isinstance(pre, str):
            raise TokenizerError(f"{_P}pre must be a string")
        add_bos = metadata.get(_P + "add_bos_token")
        return BPETokenizer(
            tokens, merges, types, pre=pre,
            bos_id=_token_id(metadata, "bos_token_id", 11, n),
            eos_id=_token_id(metadata, "eos_token_id", 11, n),
            unk_id=_token_id(metadata, "unknown_token_id", None, n),
            pad_id=_token_id(metadata, "padding_token_id", None, n),
            eot_id=_token_id(metadata, "eot_token_id", None, n),
            eom_id=_token_id(metadata, "eom_token_id", None, n),
            add_bos=None if add_bos is None else _flag(metadata, "add_bos_token", False),
            add_eos=_flag(metadata, "add_eos_token", False),
            fim_ids=_fim_ids(metadata, n))
    raise UnsupportedModelError(f"tokenizer model {model!r} is not supported "
                                f"(supported: 'llama', 'gpt2')", key=_P + "model")
