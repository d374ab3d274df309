"""Token bytes -> text chunks for streaming: whole UTF-8 characters, stop strings honoured."""
from __future__ import annotations

import codecs
from collections.abc import Sequence

from .errors import TokenizerError
from .tokenizers import Tokenizer


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
        if not 0 <= token < self._tok.vocab_size:
            raise TokenizerError(f"the model produced token id {token}, which its tokenizer "
                                 f"(vocabulary {self._tok.vocab_size}) cannot decode")
        piece = self._decoder.decode(self._tok.token_bytes(token))
        if self._strip and piece:
            piece = piece.removeprefix(" ")
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
