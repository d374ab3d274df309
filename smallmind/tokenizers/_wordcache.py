"""The word cache the tokenizers share: a pre-tokenized word is merged once, then looked up."""
from __future__ import annotations

from collections.abc import Callable, Iterable

#: Most words a cache holds before it starts over (bounds memory on endless distinct input).
CACHE_LIMIT = 1 << 18


def encode_words(words: Iterable[str], cache: dict[str, tuple[int, ...]],
                 encode_word: Callable[[str], tuple[int, ...]], out: list[int]) -> None:
    """Extend ``out`` with the ids of each word, from ``cache`` or else ``encode_word``."""
    for word in words:
        ids = cache.get(word)
        if ids is None:
            ids = encode_word(word)
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[word] = ids
        out.extend(ids)
