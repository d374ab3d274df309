"""Token masks for constrained decoding: ban every token a packed bitmask does not allow.

A mask is llguidance's layout: one bit per token, little-endian within 32-bit words, so
token ``t`` is allowed when ``mask[t >> 5] >> (t & 31) & 1``. The logits row is edited in
place (no copy): a banned token's logit becomes ``-inf``, which the sampler turns into
weight exactly 0. Whole words are tested first, since a grammar usually allows either
almost nothing (all-zero words) or almost everything (all-one words).
"""
from libc.math cimport INFINITY
from libc.stdint cimport uint32_t


cdef extern from *:
    int __builtin_popcount(unsigned int x) nogil


cdef void _apply(float* logits, Py_ssize_t n, const uint32_t* mask) noexcept nogil:
    cdef Py_ssize_t w, t, end
    cdef uint32_t word
    cdef Py_ssize_t n_words = (n + 31) >> 5
    for w in range(n_words):
        word = mask[w]
        if word == 0xFFFFFFFFu:
            continue
        end = min(n, (w + 1) << 5)
        if word == 0:
            for t in range(w << 5, end):
                logits[t] = -INFINITY
        else:
            for t in range(w << 5, end):
                if not (word >> (t & 31)) & 1u:
                    logits[t] = -INFINITY


cdef Py_ssize_t _count(const uint32_t* mask, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t w, total = 0
    cdef Py_ssize_t full = n >> 5
    cdef uint32_t tail
    for w in range(full):
        total += __builtin_popcount(mask[w])
    if n & 31:
        tail = mask[full] & ((1u << (n & 31)) - 1u)
        total += __builtin_popcount(tail)
    return total


def _check(Py_ssize_t n, Py_ssize_t n_words) -> None:
    if n_words * 32 < n:
        raise ValueError(f"mask has {n_words} words ({n_words * 32} tokens) for {n} logits")


def apply_token_mask(float[::1] logits, const uint32_t[::1] mask) -> None:
    """Set ``logits[t] = -inf`` for every token ``t`` whose bit in ``mask`` is 0.

    ``logits``: contiguous float32 (vocab,), edited in place. ``mask``: contiguous uint32
    with at least ``ceil(vocab / 32)`` words; bits past the vocabulary are ignored.
    """
    cdef Py_ssize_t n = logits.shape[0]
    _check(n, mask.shape[0])
    if n == 0:
        return
    with nogil:
        _apply(&logits[0], n, &mask[0])


def count_allowed(const uint32_t[::1] mask, Py_ssize_t n) -> int:
    """How many of tokens ``0 .. n-1`` the mask allows."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check(n, mask.shape[0])
    if n == 0:
        return 0
    with nogil:
        n = _count(&mask[0], n)
    return n
