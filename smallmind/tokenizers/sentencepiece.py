"""SentencePiece-style tokenizer (GGUF ``tokenizer.ggml.model = "llama"``), as llama.cpp
runs it (``llm_tokenizer_spm``).

Each stretch of plain text gets a leading space when ``add_space_prefix`` (at the start
and after every special token), has its spaces written as ``▁`` (U+2581), and is split
into characters; then the adjacent pair whose joined text is a vocabulary piece with the
highest score is merged, leftmost on ties, until no pair is a piece. Characters left
over that are not pieces become byte tokens ``<0xXX>`` (or the unknown token).

Merges only ever join text that some piece contains, so the text can be cut wherever no
piece spans the cut: before a ``▁`` whose left neighbour never precedes a ``▁`` inside a
piece. Those words are merged independently (giving the same result as merging the
whole text) and cached.
"""
from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import TokenizerError
from ._merge import merge_pairs
from ._pieces import PieceChars
from ._vocab import VocabTokenizer, _parse_byte_token
from ._wordcache import encode_words

__all__ = ["SentencePieceTokenizer"]

SPACE = "\u2581"
#: A normal piece's bytes are its text with ``▁`` written as a space.
_SPACE_TO_BLANK = np.arange(ord(SPACE) + 1, dtype=np.uint32)
_SPACE_TO_BLANK[ord(SPACE)] = ord(" ")
_LOWEST_SCORE = -3.4e38


def _merge_ranks(scores: Sequence[float] | np.ndarray, n: int) -> array:
    """Each token's rank as a merge result: its score negated (lower ranks merge first),
    with NaN and -inf scores taken as the lowest float32 so they compare."""
    try:
        values = np.asarray(scores[:n], dtype=np.float64)
    except (TypeError, ValueError):
        raise TokenizerError("scores must be numbers") from None
    if values.ndim != 1:
        raise TokenizerError(f"scores must be a flat sequence, not shape {values.shape}")
    # float32, as llama.cpp keeps scores (and as GGUF stores them); a score beyond the
    # float32 range becomes -inf, still the first to merge.
    with np.errstate(over="ignore"):
        ranks32 = (-np.where(values > _LOWEST_SCORE, values, _LOWEST_SCORE)).astype(np.float32)
    ranks = array("f")
    ranks.frombytes(ranks32.tobytes())
    return ranks


def word_splitter(pieces: Iterable[str], space: str) -> re.Pattern[str]:
    """A regex whose ``split`` cuts text before each ``space`` that no piece reaches
    across: one whose left neighbour never comes right before ``space`` inside a piece."""
    glue = set()
    for piece in pieces:
        start = piece.find(space, 1)
        while start != -1:
            glue.add(piece[start - 1])
            start = piece.find(space, start + 1)
    return _word_splitter_of(glue, space)


def _word_splitter_of(glue: set[str], space: str) -> re.Pattern[str]:
    """The splitter of :func:`word_splitter` given the characters that glue to ``space``."""
    space_re = re.escape(space)
    if not glue:
        return re.compile(f"(?={space_re})")
    glue_class = "".join(re.escape(ch) for ch in sorted(glue))
    return re.compile(f"(?<![{glue_class}])(?={space_re})")


class SentencePieceTokenizer(VocabTokenizer):
    """llama.cpp's SPM tokenizer over a scored vocabulary (Llama 2, Gemma...)."""

    def __init__(self, tokens: Sequence[str], scores: Sequence[float] | np.ndarray | None = None,
                 token_types: Sequence[int] | np.ndarray | None = None, *,
                 bos_id: int | None = 1, eos_id: int | None = 2, unk_id: int | None = 0,
                 pad_id: int | None = None, eot_id: int | None = None,
                 eom_id: int | None = None, add_bos: bool = True, add_eos: bool = False,
                 add_space_prefix: bool = True, fim_ids: dict[str, int | None] | None = None):
        super().__init__(tokens, token_types, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id,
                         pad_id=pad_id, eot_id=eot_id, eom_id=eom_id, add_bos=add_bos,
                         add_eos=add_eos, add_space_prefix=add_space_prefix,
                         fim_ids=fim_ids)
        n = self.vocab_size
        if scores is None:
            scores = [0.0] * n
        elif len(scores) < n:
            raise TokenizerError(f"{len(scores)} scores for {n} tokens")
        # Every piece can be a merge result, special ones included (llama.cpp looks merges
        # up in the whole vocabulary): piece -> id -> rank, with no second dict of pieces.
        self._ranks = _merge_ranks(scores, n)
        self._byte_ids = self._byte_fallback_ids()
        self._cache: dict[str, tuple[int, ...]] = {}

    def _byte_fallback_ids(self) -> list[int | None]:
        ids: list[int | None] = []
        lookup = self._token_to_id
        for b in range(256):
            token_id = lookup.get(f"<0x{b:02X}>")
            if token_id is None and b < 0x80:
                token_id = lookup.get(chr(b))
            ids.append(token_id if token_id is not None else self.unk_id)
        return ids

    def _normal_char_map(self) -> np.ndarray:
        return _SPACE_TO_BLANK

    def _index_pieces(self, chars: PieceChars) -> None:
        self._splitter = _word_splitter_of(chars.chars_before(ord(SPACE)), SPACE)

    def _byte_token_bytes(self, text: str) -> bytes:
        return _parse_byte_token(text, text.encode("utf-8", "surrogateescape"))

    def _encode_text(self, text: str, after_special: bool, out: list[int]) -> None:
        if self.add_space_prefix and after_special:
            text = " " + text
        text = text.replace(" ", SPACE)
        words = [word for word in self._splitter.split(text) if word]
        encode_words(words, self._cache, self._encode_word, out)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        lookup = self._token_to_id
        symbols = merge_by_id_rank(list(word), lookup, self._ranks)
        ids: list[int] = []
        for symbol in symbols:
            token_id = lookup.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            for b in symbol.encode("utf-8"):
                byte_id = self._byte_ids[b]
                if byte_id is None:
                    raise TokenizerError(f"character {symbol!r} is not in the vocabulary, "
                                         f"which has neither byte tokens nor an unknown token")
                ids.append(byte_id)
        return tuple(ids)


def merge_by_score(symbols: list[str], score: dict[str, float]) -> list[str]:
    """Merge the adjacent pair forming the highest-scoring piece (leftmost on ties)
    until no adjacent pair forms a piece. ``symbols`` is consumed."""
    get = score.get

    def key(a: str, b: str) -> float | None:
        s = get(a + b)
        return None if s is None else -s

    return merge_pairs(symbols, key)


def merge_by_id_rank(symbols: list[str], ids: dict[str, int], ranks: Sequence[float]) -> list[str]:
    """:func:`merge_by_score` with each piece's negated score found through its id."""
    get = ids.get

    def key(a: str, b: str) -> float | None:
        token_id = get(a + b)
        return None if token_id is None else ranks[token_id]

    return merge_pairs(symbols, key)
