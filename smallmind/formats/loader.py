"""Open any supported model file: the format is recognised from its content.

GGUF starts with the bytes ``GGUF``; a llama2.c checkpoint either starts with the
version-1 magic ``ak42`` or has a legacy header of seven plausible int32 values that
account for the file's size to the byte. Anything else is refused with a
:class:`ModelFormatError` rather than guessed at.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, UnsupportedModelError
from . import LoadedModel
from ._hparams import check_hyperparameters
from .gguf import GGUF_MAGIC, load_gguf
from .llama2c import LEGACY_HEADER_BYTES, V1_HEADER_BYTES, load_llama2c, looks_like_llama2c, read_header

#: Magics of llama.cpp's pre-GGUF files ("ggml", "ggmf", "ggjt" as little-endian u32s).
_LEGACY_GGML_MAGICS = {b"lmgg", b"fmgg", b"tjgg"}


def detect_format(path: str | os.PathLike) -> str:
    """``"gguf"`` or ``"llama2c"``; raises :class:`ModelFormatError` for anything else."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise ModelFormatError("not a regular file", path=path)
        raise FileNotFoundError(f"model file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(V1_HEADER_BYTES)
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:4] in _LEGACY_GGML_MAGICS:
        raise UnsupportedModelError("pre-GGUF GGML/GGJT file; convert it to GGUF with llama.cpp",
                                    path=path, offset=0)
    if looks_like_llama2c(path, head, size):
        return "llama2c"
    if len(head) >= LEGACY_HEADER_BYTES:
        header = read_header(path, head)
        if not header.problems():
            # Sane hyper-parameters but the wrong size: almost certainly a truncated or
            # padded llama2.c file, which deserves the precise size complaint.
            return "llama2c"
    first = struct.unpack_from("<I", head)[0] if len(head) >= 4 else None
    raise ModelFormatError(
        "unrecognised model format: neither GGUF (magic 'GGUF') nor a llama2.c checkpoint "
        f"(first bytes {head[:8]!r}{f', u32 {first:#x}' if first is not None else ''})",
        path=path, offset=0)


def load_model(path: str | os.PathLike, *, tokenizer: Any = None,
               n_ctx: int | None = None) -> LoadedModel:
    """Load a GGUF or llama2.c model file.

    ``tokenizer`` replaces the model's own (a :class:`~smallmind.tokenizers.Tokenizer`
    or the path of a llama2.c ``tokenizer.bin``); ``n_ctx`` overrides the context length.
    """
    fmt = detect_format(path)
    if fmt == "gguf":
        loaded = load_gguf(path, tokenizer=tokenizer, n_ctx=n_ctx)
    else:
        loaded = load_llama2c(path, tokenizer=tokenizer, n_ctx=n_ctx)
    check_hyperparameters(loaded.config, loaded.path)
    return loaded
