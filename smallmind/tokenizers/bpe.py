"""Byte-level BPE (GGUF ``tokenizer.ggml.model = "gpt2"``), as llama.cpp runs it.

Text -> special tokens split out -> pre-tokenizer words -> each word's UTF-8 bytes
spelled with GPT-2's byte-to-character table -> ranked merges inside the word (lowest
rank first, leftmost on ties) -> vocabulary ids. Words repeat, so their ids are cached.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import TokenizerError
from ._merge import merge_pairs
from ._pieces import escaped_byte
from ._pretokenize import PreTokenizer, pre_tokenizer
from ._vocab import VocabTokenizer
from ._wordcache import encode_words

__all__ = ["BPETokenizer", "bytes_to_unicode"]


def bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte value: printable Latin-1 bytes keep their
    own character, the other 68 map in order to U+0100 onwards."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_BYTE_CHARS = bytes_to_unicode()
#: For ``str.translate`` on text decoded as Latin-1 (one character per byte).
_LATIN1_TO_GPT2 = {b: ch for b, ch in enumerate(_BYTE_CHARS)}
#: A normal piece's characters -> the bytes they stand for (as the code points that encode to
#: them); characters outside the table (not a byte-level piece) are kept as themselves.
_GPT2_CHAR_TO_BYTE = np.arange(max(map(ord, _BYTE_CHARS)) + 1, dtype=np.uint32)
_GPT2_CHAR_TO_BYTE[[ord(ch) for ch in _BYTE_CHARS]] = [escaped_byte(b) for b in range(256)]


class BPETokenizer(VocabTokenizer):
    """llama.cpp's byte-level BPE tokenizer.

    ``tokens``/``token_types`` are the vocabulary (GGUF ``tokenizer.ggml.tokens`` and
    ``token_type``), ``merges`` the ranked ``"left right"`` pairs, ``pre`` the
    pre-tokenizer name (``tokenizer.ggml.pre``).
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str],
                 token_types: Sequence[int] | np.ndarray | None = None, *, pre: str = "default",
                 bos_id: int | None = None, eos_id: int | None = None,
                 unk_id: int | None = None, pad_id: int | None = None,
                 eot_id: int | None = None, eom_id: int | None = None,
                 add_bos: bool | None = None, add_eos: bool = False,
                 fim_ids: dict[str, int | None] | None = None):
        self._pre: PreTokenizer = pre_tokenizer(pre)
        if add_bos is None:
            add_bos = self._pre.add_bos
        super().__init__(tokens, token_types, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id,
                         pad_id=pad_id, eot_id=eot_id, eom_id=eom_id, add_bos=add_bos,
                         add_eos=add_eos, add_space_prefix=False, fim_ids=fim_ids)
        self.pre = self._pre.name
        ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            if not isinstance(merge, str):
                raise TokenizerError(f"merge {rank} is {type(merge).__name__}, not str")
            # llama.cpp splits at the first space after the first character, so a
            # merge of a space-led piece still parses.
            cut = merge.find(" ", 1)
            if cut == -1:
                continue
            ranks.setdefault((merge[:cut], merge[cut + 1:]), rank)
        self._ranks = ranks
        self._cache: dict[str, tuple[int, ...]] = {}

    def _normal_char_map(self) -> np.ndarray:
        return _GPT2_CHAR_TO_BYTE

    def _encode_text(self, text: str, after_special: bool, out: list[int]) -> None:
        encode_words(self._pre.split(text), self._cache, self._encode_word, out)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        spelled = word.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_GPT2)
        lookup = self._token_to_id
        if self._pre.ignore_merges and spelled in lookup:
            return (lookup[spelled],)
        symbols = merge_by_rank(spelled, self._ranks)
        ids: list[int] = []
        for symbol in symbols:
            token_id = lookup.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            # llama.cpp's fallback: each UTF-8 byte of the piece looked up on its own,
            # dropped when the vocabulary lacks it.
            for b in symbol.encode("utf-8"):
                token_id = lookup.get(chr(b)) if b < 0x80 else None
                if token_id is not None:
                    ids.append(token_id)
        return tuple(ids)


def merge_by_rank(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply the lowest-ranked adjacent merge (leftmost on ties) until none applies."""
    get = ranks.get
    return merge_pairs(list(word), lambda a, b: get((a, b)))
