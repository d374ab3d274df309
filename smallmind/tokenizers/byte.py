"""The byte tokenizer: token id = byte value (vocabulary 256, no special tokens)."""
from __future__ import annotations

from .base import Tokenizer

_BYTES = [bytes([i]) for i in range(256)]


class ByteTokenizer(Tokenizer):
    vocab_size = 256

    def encode(self, text: str, *, add_special: bool | None = None,
               parse_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        return _BYTES[token_id]
