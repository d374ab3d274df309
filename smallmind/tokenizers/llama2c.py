"""llama2.c's ``tokenizer.bin`` and the encoder of its ``run.c``.

File: int32 ``max_token_length``, then for each token a float32 score, an int32 byte
length and the piece's bytes (SentencePiece's ``▁`` already written as a space; ids 0, 1,
2 are ``<unk>``, BOS, EOS; ids 3..258 the byte tokens ``<0x00>``..``<0xFF>``).

``run.c`` encodes differently from llama.cpp's SPM: BOS (if asked), then the piece
``" "`` as a dummy prefix when the text is not empty, then one token per code point (the
piece equal to it, else its UTF-8 bytes as ids ``byte + 3``), then merges of adjacent
tokens whose joined pieces are a piece with a score above -1e10, best score first,
leftmost on ties. BOS takes part in the merging; EOS is appended afterwards.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from ..errors import TokenizerError
from ._vocab import _check_encodable, _parse_byte_token
from ._wordcache import encode_words
from .base import Tokenizer
from .sentencepiece import merge_by_score, word_splitter

__all__ = ["Llama2cTokenizer"]

BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
#: run.c starts its search for the best merge below this score.
_SCORE_FLOOR = -1e10


class Llama2cTokenizer(Tokenizer):
    """A llama2.c vocabulary with run.c's encoder."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    add_bos = True
    add_eos = False
    add_space_prefix = True

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float],
                 max_token_length: int | None = None):
        if len(pieces) != len(scores):
            raise TokenizerError(f"{len(pieces)} pieces but {len(scores)} scores")
        if len(pieces) < BYTE_OFFSET + 256:
            raise TokenizerError(f"a llama2.c vocabulary needs at least {BYTE_OFFSET + 256} "
                                 f"tokens (<unk>, BOS, EOS, 256 bytes); this one has {len(pieces)}")
        self.vocab_size = len(pieces)
        self.max_token_length = (max(len(p) for p in pieces) if max_token_length is None
                                 else int(max_token_length))
        self._pieces = [p.decode("utf-8", "surrogateescape") for p in pieces]
        self._scores = [float(s) for s in scores]
        # run.c finds pieces by binary search; with duplicate pieces the first id wins here.
        self._piece_to_id: dict[str, int] = {}
        for i, piece in enumerate(self._pieces):
            self._piece_to_id.setdefault(piece, i)
        self._merge_score = {piece: self._scores[i] for piece, i in self._piece_to_id.items()
                             if self._scores[i] > _SCORE_FLOOR}
        self._space_id = self._piece_to_id.get(" ")
        self._chars = frozenset(p for p in self._piece_to_id if len(p) == 1)
        self._fallback = [self._pieces[b + BYTE_OFFSET] for b in range(256)]
        self._splitter = word_splitter(self._pieces, " ")
        # Cutting before a space is only safe if the token on its left cannot end in a
        # character that some piece puts right before a space.
        self._glue_chars = {p[i - 1] for p in self._pieces for i in range(1, len(p)) if p[i] == " "}
        self._fallback_glues = any(f and f[-1] in self._glue_chars for f in self._fallback)
        self._bos_glues = bool(self._pieces[BOS_ID]) and self._pieces[BOS_ID][-1] in self._glue_chars
        self._token_bytes = [self._bytes_of(i) for i in range(self.vocab_size)]
        self._cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, path: str | os.PathLike, vocab_size: int | None = None) -> Llama2cTokenizer:
        """Read a ``tokenizer.bin``. Without ``vocab_size`` (the model header's), tokens
        are read to the end of the file."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TokenizerError(f"{path}: cannot read tokenizer file: {exc}") from exc
        if len(data) < 4:
            raise TokenizerError(f"{path}: {len(data)} bytes is too short for a tokenizer.bin")
        (max_len,) = struct.unpack_from("<i", data, 0)
        if max_len <= 0:
            raise TokenizerError(f"{path}: max_token_length is {max_len}, must be positive")
        pieces: list[bytes] = []
        scores: list[float] = []
        pos = 4
        while pos < len(data) and (vocab_size is None or len(pieces) < vocab_size):
            if pos + 8 > len(data):
                raise TokenizerError(f"{path}: offset {pos}: token {len(pieces)} is truncated")
            score, length = struct.unpack_from("<fi", data, pos)
            if length < 0 or pos + 8 + length > len(data):
                raise TokenizerError(f"{path}: offset {pos + 4}: token {len(pieces)} claims "
                                     f"{length} bytes, {len(data) - pos - 8} remain")
            pieces.append(data[pos + 8:pos + 8 + length])
            scores.append(score)
            pos += 8 + length
        if vocab_size is not None and len(pieces) < vocab_size:
            raise TokenizerError(f"{path}: holds {len(pieces)} tokens, the model needs {vocab_size}")
        try:
            return cls(pieces, scores, max_len)
        except TokenizerError as exc:
            raise TokenizerError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ decoding

    def _bytes_of(self, token_id: int) -> bytes:
        if token_id in (0, BOS_ID, EOS_ID):
            return b""
        piece = self._pieces[token_id]
        raw = piece.encode("utf-8", "surrogateescape")
        return _parse_byte_token(piece, raw)

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        return self._token_bytes[token_id]

    def special_ids(self) -> frozenset[int]:
        return frozenset((0, BOS_ID, EOS_ID))

    def stop_ids(self) -> frozenset[int]:
        """run.c stops generating at BOS (it delimits stories) as well as at EOS."""
        return frozenset((BOS_ID, EOS_ID))

    def piece(self, token_id: int) -> str:
        """The raw piece of ``token_id`` as stored in the file."""
        self.check_ids((token_id,))
        return self._pieces[token_id]

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, *, add_special: bool | None = None,
               parse_special: bool = False) -> list[int]:
        """run.c's ``encode``. ``add_special`` None or True adds BOS (as run.c's generate
        does), False nothing; ``parse_special`` has no effect (run.c has no special-token
        syntax)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        _check_encodable(text)
        add = add_special is None or add_special
        out: list[int] = []
        if not text:
            return [BOS_ID] if add else []
        if self._space_id is not None:
            text = " " + text
        words = self._words(text)
        if add:
            if self._bos_glues or self._space_id is None:
                # BOS could merge with the first word: merge them together, uncached.
                first = self._symbols(words[0])
                out.extend(self._merge([self._pieces[BOS_ID], *first]))
                words = words[1:]
            else:
                out.append(BOS_ID)
        encode_words(words, self._cache, self._encode_word, out)
        return out

    def _encode_word(self, word: str) -> tuple[int, ...]:
        return tuple(self._merge(self._symbols(word)))

    def _words(self, text: str) -> list[str]:
        if self._space_id is None:
            return [text]
        words = [w for w in self._splitter.split(text) if w]
        if not self._fallback_glues:
            return words
        # A character without a piece becomes byte tokens whose last character may glue
        # to the next space: keep such words together.
        joined: list[str] = []
        for word in words:
            if joined and joined[-1][-1] not in self._piece_to_id:
                last_piece = self._fallback[joined[-1][-1].encode("utf-8")[-1]]
                if last_piece and last_piece[-1] in self._glue_chars:
                    joined[-1] += word
                    continue
            joined.append(word)
        return joined

    def _symbols(self, word: str) -> list[str]:
        if self._chars.issuperset(word):
            return list(word)
        lookup = self._piece_to_id
        symbols: list[str] = []
        for ch in word:
            if ch in lookup:
                symbols.append(ch)
            else:
                symbols.extend(self._fallback[b] for b in ch.encode("utf-8"))
        return symbols

    def _merge(self, symbols: list[str]) -> list[int]:
        lookup = self._piece_to_id
        return [lookup[s] for s in merge_by_score(symbols, self._merge_score)]
