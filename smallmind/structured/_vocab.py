"""Our tokenizers seen by llguidance: one ``LLTokenizer`` per (tokenizer, vocabulary size), cached.

llguidance needs every token's bytes, the ids that end generation, and a way to tokenize
text. Control tokens (the ones a tokenizer renders as nothing) are given to it as
``b"\\xff" + name``, its convention for special tokens: no text can spell them, and a Lark
grammar can still name them (``<|im_end|>``). A vocabulary without an end token (the byte
tokenizer) gets a virtual one just past the model's vocabulary: its bit in a mask says
"the grammar is complete here" and never reaches a logit.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..tokenizers import Tokenizer


def require_llguidance() -> Any:
    """The llguidance module, imported on first use (``import smallmind`` stays light)."""
    try:
        import llguidance
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("structured output needs llguidance: pip install 'smallmind[structured]'") from None
    return llguidance


@dataclass(frozen=True)
class Vocabulary:
    """An ``LLTokenizer`` and what the engine needs to know about its layout."""

    ll: Any                      # llguidance.LLTokenizer
    n_logits: int                # the model's vocabulary: the logits row a mask applies to
    mask_words: int              # uint32 words per mask (covers the virtual end token too)
    end_ids: frozenset[int]      # ids llguidance treats as end of sequence
    #: Compiled grammars for this vocabulary, most recently used last (constraint.py).
    grammars: OrderedDict = field(default_factory=OrderedDict, repr=False)


_cache: weakref.WeakKeyDictionary[Tokenizer, dict[int, Vocabulary]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def vocabulary(tokenizer: Tokenizer, n_logits: int) -> Vocabulary:
    """The cached llguidance view of ``tokenizer`` for a model with ``n_logits`` outputs."""
    with _lock:
        per_size = _cache.setdefault(tokenizer, {})
        vocab = per_size.get(n_logits)
        if vocab is None:
            vocab = per_size[n_logits] = _build(tokenizer, n_logits)
        return vocab


def _special_name(tokenizer: Tokenizer, token_id: int) -> bytes:
    for method in ("id_to_token", "piece"):
        fn = getattr(tokenizer, method, None)
        if fn is not None:
            name = fn(token_id)
            if name:
                return b"\xff" + str(name).encode("utf-8", "surrogateescape")
    return b"\xff<special_%d>" % token_id


class _Encoder:
    """What llguidance's TokenizerWrapper calls to tokenize text (it uses this for bytes
    the grammar forces). The tokens must spell exactly ``text``: where our encoder adds
    something (SentencePiece's leading space), a greedy longest match over the vocabulary
    is used instead."""

    def __init__(self, tokenizer: Tokenizer, tokens: list[bytes], **attrs: Any):
        # Weak: the cache entry this ends up in must not keep its own key alive.
        self._tok = weakref.ref(tokenizer)
        self._ids: dict[bytes, int] = {}
        for i, piece in enumerate(tokens):
            if piece and not piece.startswith(b"\xff"):
                self._ids.setdefault(piece, i)
        self._longest = max(map(len, self._ids), default=1)
        self.tokens = tokens
        self.__dict__.update(attrs)

    def __call__(self, text: str) -> list[int]:
        tokenizer = self._tok()
        if tokenizer is None:
            raise RuntimeError("the tokenizer of this vocabulary no longer exists")
        ids = tokenizer.encode(text, add_special=False)
        raw = text.encode("utf-8")
        if b"".join(self.tokens[i] for i in ids) == raw:
            return ids
        out, pos = [], 0
        while pos < len(raw):
            for size in range(min(self._longest, len(raw) - pos), 0, -1):
                token = self._ids.get(raw[pos:pos + size])
                if token is not None:
                    out.append(token)
                    pos += size
                    break
            else:
                raise ValueError(f"byte {raw[pos]:#x} has no token")
        return out


def _build(tokenizer: Tokenizer, n_logits: int) -> Vocabulary:
    lib = require_llguidance()
    n_tok = tokenizer.vocab_size
    special = tokenizer.special_ids()
    tokens = [_special_name(tokenizer, i) if i in special else tokenizer.token_bytes(i)
              for i in range(min(n_tok, n_logits))]
    # Model outputs past the tokenizer's vocabulary (padded embeddings) can never be text.
    tokens += [b"\xff<unused_%d>" % i for i in range(len(tokens), n_logits)]
    end = sorted(i for i in tokenizer.stop_ids() if i < n_logits)
    if not end:
        end = [n_logits]
        tokens.append(b"\xff<end>")
    wrapper = lib.TokenizerWrapper(_Encoder(
        tokenizer, tokens, eos_token_id=end[0], bos_token_id=tokenizer.bos_id,
        special_token_ids=sorted(i for i in special if i < n_logits)))
    ll = lib.LLTokenizer(wrapper, n_vocab=len(tokens), eos_token=end)
    return Vocabulary(ll=ll, n_logits=n_logits, mask_words=(len(tokens) + 31) // 32,
                      end_ids=frozenset(end))
