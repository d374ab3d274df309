"""The interface every tokenizer implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence


class Tokenizer(ABC):
    """Text <-> token ids.

    ``token_bytes(id)`` is the raw UTF-8 bytes a token stands for in running text (a
    SentencePiece "▁" becomes a space, a byte-fallback token its byte, a control token
    nothing); ``decode`` joins them, so streaming decoders can work on bytes and never
    split a multi-byte character.
    """

    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    #: SentencePiece models prepend a space to the text; decoding strips it again from the
    #: first piece of a sequence (llama.cpp and llama2.c both do).
    add_space_prefix: bool = False

    @abstractmethod
    def encode(self, text: str, *, add_special: bool | None = None,
               parse_special: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_special`` (default: the model's own add_bos/add_eos
        flags) adds BOS/EOS; ``parse_special`` turns special-token text such as
        ``<|im_start|>`` into its id instead of spelling it out."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes ``token_id`` contributes to decoded text."""

    def special_ids(self) -> frozenset[int]:
        """Control tokens (BOS, EOS, end-of-turn...) that ``decode`` renders as nothing."""
        return frozenset(i for i in (self.bos_id, self.eos_id) if i is not None)

    def stop_ids(self) -> frozenset[int]:
        """Tokens that end generation: EOS and, for chat models, end-of-turn tokens."""
        return frozenset(i for i in (self.eos_id,) if i is not None)

    def check_ids(self, ids: Iterable[int]) -> None:
        """TypeError for anything but integer ids (no float truncation), TokenizerError for
        ids outside the vocabulary."""
        from numbers import Integral

        from ..errors import TokenizerError
        if isinstance(ids, (str, bytes, bytearray)):
            raise TypeError(f"ids must be a sequence of token ids, got {type(ids).__name__}")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, Integral):
                raise TypeError(f"ids must hold integer token ids, got {i!r}")
            if not 0 <= int(i) < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        self.check_ids(ids)
        out = self._joined_bytes(ids)
        if self.add_space_prefix and out.startswith(b" ") and self._starts_text(ids):
            out = out[1:]
        return out

    def _joined_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes of ``ids`` (already checked), joined."""
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def _starts_text(self, ids: Sequence[int]) -> bool:
        return len(ids) > 0

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
