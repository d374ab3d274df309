"""A vocabulary's pieces as one array of code points, so that the work done once per token
when a tokenizer is built (each token's bytes, the characters next to a marker) is a few
numpy passes rather than a Python loop over 262,144 tokens (Gemma 3)."""
from __future__ import annotations

import numpy as np

#: What a token contributes to decoded text, by kind.
DROP = 0      # nothing (control, unknown, unused tokens)
RAW = 1       # its text's UTF-8 bytes
MAPPED = 2    # its text, each character passed through the tokenizer's character map

#: Lone surrogates U+DC80..U+DCFF stand for undecodable bytes (``surrogateescape``).
_ESCAPE_LO, _ESCAPE_HI = 0xDC80, 0xDCFF


def escaped_byte(b: int) -> int:
    """The code point that encodes (UTF-8, ``surrogateescape``) to the single byte ``b``."""
    return b if b < 0x80 else 0xDC00 + b


class PieceChars:
    """The code points of every piece, concatenated, and where each piece starts and ends."""

    def __init__(self, pieces: list[str]):
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        self.starts = np.cumsum(lengths) - lengths
        self.lengths = lengths
        # Lone surrogates (invalid UTF-8 kept by the GGUF reader) pass through as themselves.
        self.codes = np.frombuffer("".join(pieces).encode("utf-32-le", "surrogatepass"), np.uint32)

    def chars_before(self, code: int) -> set[str]:
        """The characters that come right before ``code`` inside a piece (never as a
        piece's first character)."""
        at = np.flatnonzero(self.codes == code)
        first = np.zeros(len(self.codes), dtype=bool)
        first[self.starts[self.lengths > 0]] = True
        at = at[~first[at]]
        return {chr(c) for c in set(self.codes[at - 1].tolist())}   # (np.unique imports numpy.ma)

    def token_bytes(self, kinds: np.ndarray, char_map: np.ndarray,
                    given: dict[int, bytes]) -> tuple[bytes, np.ndarray]:
        """Every token's bytes in one blob, and the ``n + 1`` offsets (int64) where token i
        is ``blob[ends[i]:ends[i + 1]]``.

        ``kinds`` (one per token): DROP, RAW or MAPPED, where a MAPPED character ``c`` below
        ``len(char_map)`` becomes ``char_map[c]`` (code points; :func:`escaped_byte` for a
        single byte). Tokens in ``given`` have those bytes instead. A lone surrogate outside
        U+DC80..U+DCFF raises UnicodeEncodeError, as ``str.encode`` does.
        """
        # A token's characters are all kept or all dropped: work on the kept ones only, in
        # small types (a 262k-token vocabulary has 1.5M characters).
        kept = np.where(kinds != DROP, self.lengths, 0)
        keep = np.repeat(kinds != DROP, self.lengths)
        codes = self.codes[keep]
        mapped = np.repeat(kinds[kinds != DROP] == MAPPED, kept[kept > 0])
        del keep
        mapped &= codes < len(char_map)
        codes[mapped] = char_map[codes[mapped]]
        del mapped
        blob = codes.tobytes().decode("utf-32-le", "surrogatepass").encode("utf-8", "surrogateescape")
        utf8_len = np.ones(len(codes), dtype=np.uint8)
        for bound in (0x80, 0x800, 0x10000):
            utf8_len += codes >= bound
        escaped = (codes >= _ESCAPE_LO) & (codes <= _ESCAPE_HI)     # 3 -> 1 byte
        utf8_len[escaped] = 1
        del codes
        sizes = np.zeros(len(kinds), dtype=np.int64)
        if len(utf8_len):
            nonempty = kept > 0
            first = np.cumsum(kept) - kept         # each token's first kept character
            sizes[nonempty] = np.add.reduceat(utf8_len, first[nonempty], dtype=np.int64)
        ends = np.concatenate(([0], np.cumsum(sizes)))
        if not given:
            return blob, ends
        # The few tokens with bytes of their own (byte tokens): splice them in.
        ids = np.fromiter(given, np.int64, len(given))
        sizes[ids] = [len(b) for b in given.values()]
        ends = np.concatenate(([0], np.cumsum(sizes)))
        out = np.empty(int(ends[-1]), dtype=np.uint8)
        own = np.zeros(len(sizes), dtype=bool)
        own[ids] = True
        out[np.repeat(~own, sizes)] = np.frombuffer(blob, np.uint8)
        for token_id, data in given.items():
            out[ends[token_id]:ends[token_id + 1]] = np.frombuffer(data, np.uint8)
        return out.tobytes(), ends
