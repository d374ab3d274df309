"""What the GGUF tokenizers share: token attributes, special tokens, end-of-generation ids,
and llama.cpp's splitting of special-token text out of the input before the real work."""
from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from ..errors import TokenizerError
from ._pieces import DROP, MAPPED, RAW, PieceChars
from .base import Tokenizer

# GGUF ``tokenizer.ggml.token_type`` values.
TYPE_UNDEFINED = 0
TYPE_NORMAL = 1
TYPE_UNKNOWN = 2
TYPE_CONTROL = 3
TYPE_USER_DEFINED = 4
TYPE_UNUSED = 5
TYPE_BYTE = 6

# Token attributes, as bit flags: llama.cpp lets a token be several things at once (an
# end-of-turn token that the file calls user-defined is also made a control token).
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

_ATTR_OF_TYPE = {
    TYPE_UNDEFINED: ATTR_UNDEFINED, TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN,
    TYPE_CONTROL: ATTR_CONTROL, TYPE_USER_DEFINED: ATTR_USER_DEFINED,
    TYPE_UNUSED: ATTR_UNUSED, TYPE_BYTE: ATTR_BYTE,
}

#: Token texts llama.cpp treats as end of generation whatever the file says.
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
    "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
    "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
    "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
})
#: Texts that name the end-of-turn token when the file gives no ``eot_token_id``.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
#: Fill-in-the-middle token texts by role; llama.cpp stops on pad, repo and file separator.
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
            "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
            "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
            "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_FIM_STOPS = ("pad", "rep", "sep")
#: Harmony-format tokens that llama.cpp always renders (it makes them user-defined).
_ALWAYS_RENDERED_TEXTS = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})


_ATTR_TABLE = np.array([_ATTR_OF_TYPE[t] for t in range(len(_ATTR_OF_TYPE))], dtype=np.uint8)


def _attrs_of_types(token_types: Sequence[int] | np.ndarray, n: int) -> bytearray:
    """Each token's attribute flags from its GGUF type (unknown types: ATTR_UNDEFINED)."""
    types = np.asarray(token_types[:n])
    if types.dtype.kind not in "iub":     # floats, huge ints...: int() each, as llama.cpp's cast
        return bytearray(_ATTR_OF_TYPE.get(int(t), ATTR_UNDEFINED) for t in token_types[:n])
    types = types.astype(np.int64)
    known = (types >= 0) & (types < len(_ATTR_TABLE))
    return bytearray(np.where(known, _ATTR_TABLE[np.where(known, types, 0)], ATTR_UNDEFINED)
                     .astype(np.uint8).tobytes())


def _refuse_duplicate(pieces: list[str]) -> None:
    first: dict[str, int] = {}
    for i, text in enumerate(pieces):
        if first.setdefault(text, i) != i:
            raise TokenizerError(f"duplicate token {text!r} has ids {first[text]} and {i}")


def _check_id(name: str, value: int | None, n_tokens: int) -> int | None:
    if value is None:
        return None
    value = int(value)
    if not 0 <= value < n_tokens:
        raise TokenizerError(f"{name} {value} is outside the vocabulary [0, {n_tokens})")
    return value


class VocabTokenizer(Tokenizer):
    """Shared machinery of :class:`SentencePieceTokenizer` and :class:`BPETokenizer`.

    Subclasses implement ``_encode_text(fragment, after_special, out)`` for one stretch of
    plain text and ``_normal_char_map()`` for the characters of a normal token's bytes.
    """

    def __init__(self, tokens: Sequence[str], token_types: Sequence[int] | np.ndarray | None = None, *,
                 bos_id: int | None = None, eos_id: int | None = None,
                 unk_id: int | None = None, pad_id: int | None = None,
                 eot_id: int | None = None, eom_id: int | None = None,
                 add_bos: bool = False, add_eos: bool = False,
                 add_space_prefix: bool = False, fim_ids: dict[str, int | None] | None = None):
        n = len(tokens)
        if n == 0:
            raise TokenizerError("the vocabulary is empty")
        if token_types is not None and len(token_types) < n:
            raise TokenizerError(f"{len(token_types)} token types for {n} tokens")
        self.vocab_size = n
        # llama.cpp renames empty pieces so every text maps to one id.
        pieces = list(tokens) if all(tokens) else [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        # No list of the pieces is kept: the dict holds them in id order (duplicates are
        # refused), which is all that the subclasses' setup and id_to_token need.
        self._pieces: list[str] | None = None
        self._token_to_id: dict[str, int] = {text: i for i, text in enumerate(pieces)}
        if len(self._token_to_id) != n:
            _refuse_duplicate(pieces)
        self.bos_id = _check_id("BOS id", bos_id, n)
        self.eos_id = _check_id("EOS id", eos_id, n)
        self.unk_id = _check_id("unknown-token id", unk_id, n)
        self.pad_id = _check_id("padding id", pad_id, n)
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        if self.add_bos and self.bos_id is None:
            raise TokenizerError("add_bos is set but the vocabulary has no BOS token")
        if self.add_eos and self.eos_id is None:
            raise TokenizerError("add_eos is set but the vocabulary has no EOS token")
        self.add_space_prefix = bool(add_space_prefix)

        # One byte per token (a list would hold a pointer per token).
        attrs = bytearray([ATTR_NORMAL]) * n if token_types is None else _attrs_of_types(token_types, n)
        self._attrs = attrs
        self.eot_id = _check_id("end-of-turn id", eot_id, n)
        self.eom_id = _check_id("end-of-message id", eom_id, n)
        fim = {role: _check_id(f"FIM {role} id", value, n)
               for role, value in (fim_ids or {}).items()}
        self._eog = self._find_end_of_generation(fim, pieces)

        flags = np.frombuffer(bytes(attrs), dtype=np.uint8)
        # Special tokens split out of the text before tokenizing, longest first.
        specials = np.flatnonzero(flags & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)).tolist()
        # llama.cpp sorts by UTF-8 length (with an unstable sort: equal lengths may come
        # in another order there, which matters only for overlapping equal-length pieces).
        specials.sort(key=lambda i: -len(pieces[i].encode("utf-8", "surrogateescape")))
        self._specials_all = [(pieces[i], i) for i in specials]
        self._specials_plain = [(pieces[i], i) for i in specials
                                if not attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN)]
        self._finders = (_SpecialFinder(self._specials_plain), _SpecialFinder(self._specials_all))
        # Every token's bytes in one blob: token i is blob[ends[i]:ends[i + 1]] (262k separate
        # bytes objects would cost Gemma 12 MiB).
        chars = PieceChars(pieces)
        blob, ends = self._token_blob(flags, pieces, chars)
        if ends[-1] > 0xFFFFFFFF:
            first = int(np.searchsorted(ends, 0xFFFFFFFF, side="right")) - 1
            raise TokenizerError(f"the token texts exceed 4 GiB at token {first}")
        self._blob = blob
        self._ends = array("I", ends.astype(np.uint32).tobytes())
        # Control, unknown and unused tokens render as nothing.
        self._silent = frozenset(np.flatnonzero(ends[1:] == ends[:-1]).tolist())
        self._index_pieces(chars)

    # ------------------------------------------------------------------ setup

    def _find_end_of_generation(self, fim_ids: dict[str, int | None],
                                pieces: list[str]) -> frozenset[int]:
        """llama.cpp's end-of-generation set: EOS, EOT, EOM, the FIM pad/repo/separator
        tokens and every token whose text is a known end marker. Along the way it forces
        the control flag onto such tokens (and onto auto-detected EOT/EOM/FIM ones),
        which changes how they are split out of text and rendered."""
        attrs, lookup = self._attrs, self._token_to_id

        def detect(texts: tuple[str, ...]) -> int | None:
            # llama.cpp takes the first match in hash order; here, in list order.
            for text in texts:
                if text in lookup:
                    attrs[lookup[text]] |= ATTR_CONTROL
                    return lookup[text]
            return None

        if self.eot_id is None:
            self.eot_id = detect(_EOT_TEXTS)
        if self.eom_id is None:
            self.eom_id = detect(("<|eom_id|>",))
        fim = {role: fim_ids.get(role) for role in _FIM_TEXTS}
        for role, texts in _FIM_TEXTS.items():
            if fim[role] is None:
                fim[role] = detect(texts)
        self.fim_ids = fim
        for i in np.flatnonzero(np.frombuffer(bytes(attrs), np.uint8) & ATTR_CONTROL).tolist():
            if "unused" in pieces[i]:
                attrs[i] |= ATTR_UNUSED
        eog: set[int] = {f for role in _FIM_STOPS if (f := fim[role]) is not None}
        for text in _EOG_TEXTS:
            if text in lookup:
                eog.add(lookup[text])
                attrs[lookup[text]] |= ATTR_CONTROL
        for text in _ALWAYS_RENDERED_TEXTS:
            if text in lookup:
                attrs[lookup[text]] = ATTR_USER_DEFINED
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None)
        # Harmony and Gemma 4 vocabularies reuse a marker that must not stop generation.
        if {"<|return|>", "<|call|>", "<|end|>"} <= lookup.keys() or \
                {"<|calls|>", "<|flush|>", "<|end|>"} <= lookup.keys():
            end = lookup["<|end|>"]
            eog.discard(end)
            attrs[end] = ATTR_USER_DEFINED
        if "<|tool_response>" in lookup and "</s>" in lookup:
            s = lookup["</s>"]
            eog.discard(s)
            attrs[s] = ATTR_NORMAL
        return frozenset(eog)

    def _token_blob(self, flags: np.ndarray, pieces: list[str],
                    chars: PieceChars) -> tuple[bytes, np.ndarray]:
        """Each token's bytes by its attributes: none for control and unknown tokens, a
        user-defined token's text as is, a normal token's through the subclass's character
        map, a byte token's byte (:meth:`_byte_token_bytes`), none for anything else."""
        silent = (flags & (ATTR_CONTROL | ATTR_UNKNOWN)) != 0
        raw = ~silent & ((flags & ATTR_USER_DEFINED) != 0)
        normal = ~silent & ~raw & ((flags & ATTR_NORMAL) != 0)
        byte = ~silent & ~raw & ~normal & ((flags & ATTR_BYTE) != 0)
        kinds = np.where(raw, RAW, np.where(normal, MAPPED, DROP))
        given = {i: self._byte_token_bytes(pieces[i]) for i in np.flatnonzero(byte).tolist()}
        return chars.token_bytes(kinds, self._normal_char_map(), given)

    def _normal_char_map(self) -> np.ndarray:
        """Code point -> code point (uint32) for the characters of normal tokens; those at
        or past its end are kept."""
        raise NotImplementedError

    def _byte_token_bytes(self, text: str) -> bytes:
        return _parse_byte_token(text, b"")

    def _index_pieces(self, chars: PieceChars) -> None:
        """A subclass's setup that reads every piece's characters (nothing by default)."""

    # ------------------------------------------------------------------ public

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        return self._blob[self._ends[token_id]:self._ends[token_id + 1]]

    def _joined_bytes(self, ids: Sequence[int]) -> bytes:
        blob, ends = self._blob, self._ends
        return b"".join([blob[ends[i]:ends[i + 1]] for i in map(int, ids)])

    def special_ids(self) -> frozenset[int]:
        return self._silent

    def stop_ids(self) -> frozenset[int]:
        return self._eog

    def token_to_id(self, text: str) -> int | None:
        """The id of the token whose piece is exactly ``text`` (as stored in the file)."""
        return self._token_to_id.get(text)

    def id_to_token(self, token_id: int) -> str:
        """The piece of ``token_id`` as stored in the file (``▁``, ``Ġ`` and all)."""
        self.check_ids((token_id,))
        if self._pieces is None:        # built on first use (structured output needs it)
            self._pieces = list(self._token_to_id)
        return self._pieces[token_id]

    def is_control(self, token_id: int) -> bool:
        return bool(self._attrs[token_id] & ATTR_CONTROL)

    def encode(self, text: str, *, add_special: bool | None = None,
               parse_special: bool = False) -> list[int]:
        """``add_special``: None or True adds what the model asks for (its add_bos /
        add_eos flags), as llama.cpp's ``add_special=true`` does; False adds nothing."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        _check_encodable(text)
        add = add_special is None or add_special
        out: list[int] = []
        if add and self.add_bos:
            out.append(self.bos_id)  # type: ignore[arg-type]
        after_special = True
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                out.append(fragment)
                after_special = True
            else:
                self._encode_text(fragment, after_special, out)
                after_special = False
        if add and self.add_eos:
            out.append(self.eos_id)  # type: ignore[arg-type]
        return out

    def _encode_text(self, text: str, after_special: bool, out: list[int]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ partition

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split ``text`` into plain stretches (str) and special-token ids (int).

        Mirrors llama.cpp's ``tokenizer_st_partition``: special tokens are tried longest
        first; each claims every leftmost, non-overlapping occurrence in the text that
        earlier (longer) ones left unclaimed. User-defined tokens are always split out,
        control and unknown ones only when ``parse_special``.
        """
        if not text:
            return []
        present = self._finders[parse_special].present(text)
        if not present:
            return [text]
        find = text.find
        claims: list[tuple[int, int, int]] = []      # (start, end, id), sorted
        starts: list[int] = []
        for piece, token_id in present:
            size = len(piece)
            new: list[tuple[int, int, int]] = []
            pos = find(piece)
            if not claims:
                while pos != -1:
                    new.append((pos, pos + size, token_id))
                    pos = find(piece, pos + size)
            else:
                while pos != -1:
                    end = pos + size
                    k = bisect_right(starts, pos)
                    if k and claims[k - 1][1] > pos:        # starts inside an earlier claim
                        pos = find(piece, claims[k - 1][1])
                    elif k < len(claims) and claims[k][0] < end:   # runs into the next one
                        pos = find(piece, pos + 1)
                    else:
                        new.append((pos, end, token_id))
                        pos = find(piece, end)
            if new:
                claims = sorted(claims + new) if claims else new
                starts = [c[0] for c in claims]
        parts: list[str | int] = []
        cursor = 0
        for start, end, token_id in claims:
            if start > cursor:
                parts.append(text[cursor:start])
            parts.append(token_id)
            cursor = end
        if cursor < len(text):
            parts.append(text[cursor:])
        return parts


class _SpecialFinder:
    """Which special pieces occur in a text, without scanning the text once per piece
    (Gemma has 6000+ control tokens).

    Pieces are grouped by first character. A group whose character is rare in the text
    is checked at each of its occurrences (one dict lookup per distinct piece length);
    otherwise each piece of the group is searched for.
    """

    def __init__(self, specials: list[tuple[str, int]]):
        self._order = specials
        groups: dict[str, dict[str, int]] = {}
        for piece, token_id in specials:
            groups.setdefault(piece[0], {})[piece] = token_id
        self._groups = [(first, pieces, sorted({len(p) for p in pieces}))
                        for first, pieces in groups.items()]

    def present(self, text: str) -> list[tuple[str, int]]:
        """The special pieces found in ``text``, in processing order (longest first)."""
        found: set[str] = set()
        size = len(text)
        for first, pieces, lengths in self._groups:
            count = text.count(first)
            if not count:
                continue
            # Rough costs: a slice and lookup per (occurrence, length), or a full scan of
            # the text per piece.
            if count * len(lengths) * 64 < len(pieces) * size:
                pos = text.find(first)
                while pos != -1:
                    for length in lengths:
                        candidate = text[pos:pos + length]
                        if candidate in pieces:
                            found.add(candidate)
                    pos = text.find(first, pos + 1)
            else:
                found.update(p for p in pieces if p in text)
        if not found:
            return []
        return [(piece, token_id) for piece, token_id in self._order if piece in found]


def _check_encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(f"text is not valid Unicode: lone surrogate "
                             f"{text[exc.start]!r} at index {exc.start}") from None


def _parse_byte_token(text: str, default: bytes) -> bytes:
    """``"<0x0A>"`` -> ``b"\\n"``; anything else -> ``default``."""
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return bytes([int(text[3:5], 16)])
        except ValueError:
            return default
    return default

