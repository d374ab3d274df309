"""The greedy pair-merging loop that BPE and SentencePiece share.

Both repeatedly merge the adjacent pair of symbols that ranks best and stop when no
adjacent pair may merge; they differ only in how a pair ranks (a BPE merge's rank, a
SentencePiece piece's score). ``key(left, right)`` gives that rank, lower first, or None
when the pair may not merge. Ties go to the leftmost pair, as in llama.cpp.
"""
from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import cast

PairKey = Callable[[str, str], float | None]

#: Words up to this many symbols use the rescan loop; longer ones the heap.
SHORT_WORD = 48
_NEVER = float("inf")


def merge_pairs(symbols: list[str], key: PairKey) -> list[str]:
    """Merge ``symbols`` (consumed) until no adjacent pair may merge; returns the result."""
    n = len(symbols)
    if n < 2:
        return symbols
    return _merge_rescan(symbols, key) if n <= SHORT_WORD else _merge_heap(symbols, key)


def _rank(key: PairKey, left: str, right: str) -> float:
    r = key(left, right)
    return _NEVER if r is None else r


def _merge_rescan(symbols: list[str], key: PairKey) -> list[str]:
    """One rank per adjacent pair, refreshed only where a merge changed a neighbour;
    ``min`` and ``index`` (leftmost) run at C speed."""
    pairs = [_rank(key, symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)]
    while pairs:
        best = min(pairs)
        if best == _NEVER:
            break
        i = pairs.index(best)
        merged = symbols[i] + symbols.pop(i + 1)
        symbols[i] = merged
        del pairs[i]
        if i:
            pairs[i - 1] = _rank(key, symbols[i - 1], merged)
        if i < len(pairs):
            pairs[i] = _rank(key, merged, symbols[i + 1])
    return symbols


def _merge_heap(symbols: list[str], key: PairKey) -> list[str]:
    """The same result in O(n log n): a heap of candidate pairs keyed by (rank, left
    position); entries made stale by earlier merges are skipped."""
    syms: list[str | None] = list(symbols)
    n = len(syms)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: list[tuple[float, int, int, str, str]] = []
    for i in range(n - 1):
        rank = key(symbols[i], symbols[i + 1])
        if rank is not None:
            heap.append((rank, i, i + 1, symbols[i], symbols[i + 1]))  # syms is symbols here
    heapify(heap)
    while heap:
        _, left, right, left_text, right_text = heappop(heap)
        if syms[left] != left_text or syms[right] != right_text or nxt[left] != right:
            continue
        merged = left_text + right_text
        syms[left] = merged
        syms[right] = None
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prv[after] = left
        before = prv[left]
        if before != -1:
            prev_text = cast(str, syms[before])  # a live symbol: not None
            rank = key(prev_text, merged)
            if rank is not None:
                heappush(heap, (rank, before, left, prev_text, merged))
        if after != -1:
            next_text = cast(str, syms[after])  # a live symbol: not None
            rank = key(merged, next_text)
            if rank is not None:
                heappush(heap, (rank, left, after, merged, next_text))
    return [s for s in syms if s is not None]
