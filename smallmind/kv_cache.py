"""Per-sequence key/value cache, preallocated once.

A :class:`KVCache` holds every layer's keys and values for one sequence in two float32
arrays of shape ``(n_layer, n_kv_head, capacity, head_dim)``: for one layer and head,
the cached positions are contiguous rows, which is the layout the attention kernel
(``smallmind._core._attention``) reads. Slot ``t`` holds the token at position ``t``.

The forward pass of a model uses it like this::

    pos0, shift = cache.reserve(n)   # room for n tokens; their first slot (and a Shift
                                     # if the window slid to make that room)
    ...write k, v for slots [pos0, pos0 + n) of every layer, attend...
    cache.commit(n)                  # now they count: cache.length += n

``reserve`` and ``commit`` do integer arithmetic only, so the decode loop allocates
nothing here.

When the cache is full, the ``overflow`` policy decides:

* ``"error"`` (default): ``reserve`` raises :class:`~smallmind.errors.ContextOverflowError`
  naming the capacity, the current length and the request.
* ``"shift"``: a sliding window, as llama.cpp's context shift. The first ``n_keep``
  tokens (e.g. a system prompt) stay; ``reserve`` discards the oldest tokens after them
  (half of those, or more if the request needs it) with :meth:`shift`, moving the rest
  down. The moved keys were rotated for their old positions, so a rotary model must
  re-rotate them by ``-n_discard`` positions: ``reserve`` and ``shift`` return a
  :class:`Shift` ``(start, moved, delta)``, meaning "the tokens that were in slots
  ``[start, start - delta)`` are gone, and the keys now in slots ``[start, start + moved)``
  of every layer moved by ``delta`` (< 0) positions". For RoPE the caller then runs
  ``rope(k[layer, head, start:start + moved], pos0=delta, pos_step=0)``. The cache calls
  nothing back: whoever reserves handles the shift it is handed (no reference cycles).

Positions are described by ``positional``:

* ``"rotary"`` (default): keys carry their positions (RoPE); the caller re-rotates the
  moved keys as each returned :class:`Shift` says.
* ``"learned"``: learned absolute position embeddings (GPT-2) are baked into the hidden
  states of every layer and cannot be re-positioned, so ``overflow="shift"`` is refused
  at construction (see :func:`check_policy`).
* ``"none"``: the cache holds no positional information (a shift needs no re-rotation).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import CachePolicyError, ContextOverflowError, ShapeError, SmallMindError

__all__ = ["KVCache", "Shift", "CachePolicyError", "check_policy", "OVERFLOW_POLICIES", "POSITIONAL"]

OVERFLOW_POLICIES = ("error", "shift")
POSITIONAL = ("rotary", "learned", "none")

class Shift(NamedTuple):
    """What a slide of the window did: the tokens in slots ``[start, start - delta)`` were
    dropped and the keys now in slots ``[start, start + moved)`` moved by ``delta`` (< 0)."""

    start: int
    moved: int
    delta: int

    @property
    def n_discarded(self) -> int:
        return -self.delta


def check_policy(learned_positions: bool, overflow: str) -> None:
    """Raise :class:`CachePolicyError` unless ``overflow`` works for such a model.

    A model with learned absolute positions (``learned_positions=True``, e.g. GPT-2)
    cannot slide its window: its cached keys and values depend on absolute positions
    through every layer, and there is nothing to re-rotate.
    """
    if overflow not in OVERFLOW_POLICIES:
        raise CachePolicyError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    if learned_positions and overflow == "shift":
        raise CachePolicyError(
            "overflow='shift' needs a model whose positions can be re-applied (RoPE); "
            "this model has learned absolute position embeddings, so its cache cannot "
            "slide. Use overflow='error' and a context within the model's window.")


class KVCache:
    """Keys and values of one sequence for every layer, allocated once.

    Parameters
    ----------
    n_layer, n_kv_head, capacity, head_dim : int
        The arrays ``k`` and ``v`` are float32 ``(n_layer, n_kv_head, capacity, head_dim)``.
    pool : BufferPool, optional
        Take ``k`` and ``v`` from this pool (given back by :meth:`close`); otherwise
        they are ordinary NumPy arrays. Contents of unused slots are undefined.
    overflow : {"error", "shift"}
        What :meth:`reserve` does when the cache is full (see the module docstring).
    n_keep : int
        With ``overflow="shift"``, the number of leading tokens never discarded.
    positional : {"rotary", "learned", "none"}
        How the model encodes positions; decides whether and how shifting works.

    Attributes
    ----------
    length : int
        Tokens cached (slots ``[0, length)`` are valid).
    k, v : numpy.ndarray
        The cache arrays (``None`` after :meth:`close`).
    n_discarded : int
        Tokens dropped by shifts since the last :meth:`reset`; the absolute position of
        slot ``t`` in the original sequence is ``t + n_discarded`` for ``t >= n_keep``.
    """

    def __init__(self, n_layer: int, n_kv_head: int, capacity: int, head_dim: int, *,
                 pool=None, overflow: str = "error", n_keep: int = 0,
                 positional: str = "rotary"):
        dims = dict(n_layer=n_layer, n_kv_head=n_kv_head, capacity=capacity, head_dim=head_dim)
        for name, value in dims.items():
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ShapeError(f"KVCache: {name} must be a positive integer, got {value!r}")
        if positional not in POSITIONAL:
            raise CachePolicyError(f"positional must be one of {POSITIONAL}, got {positional!r}")
        check_policy(positional == "learned", overflow)
        if not isinstance(n_keep, (int, np.integer)) or not 0 <= n_keep < capacity:
            raise CachePolicyError(f"n_keep must be in [0, capacity={capacity}), got {n_keep!r}")
        self.n_layer, self.n_kv_head = int(n_layer), int(n_kv_head)
        self.capacity, self.head_dim = int(capacity), int(head_dim)
        self.overflow = overflow
        self.n_keep = int(n_keep)
        self.positional = positional
        self.length = 0
        self.n_discarded = 0
        self.shifts = 0
        shape = (self.n_layer, self.n_kv_head, self.capacity, self.head_dim)
        self._pool = pool
        if pool is None:
            self.k = np.empty(shape, dtype=np.float32)
            self.v = np.empty(shape, dtype=np.float32)
        else:
            self.k = pool.acquire(shape)
            try:
                self.v = pool.acquire(shape)
            except BaseException:
                pool.release(self.k)
                raise

    # -- the per-token protocol ---------------------------------------------------------
    @property
    def room(self) -> int:
        """Slots still free."""
        return self.capacity - self.length

    def reserve(self, n: int) -> tuple[int, Shift | None]:
        """Make room for ``n`` more tokens: ``(slot of the first, Shift or None)``.

        Under ``overflow="error"`` a full cache raises ContextOverflowError; under
        ``"shift"`` it discards old tokens first and returns the :class:`Shift` (the caller
        re-rotates the moved keys), and raises only when ``n`` alone exceeds
        ``capacity - n_keep``.
        """
        if n < 0:
            raise ValueError(f"reserve: n must be >= 0, got {n}")
        if self.k is None:
            raise SmallMindError("this KVCache is closed")
        length = self.length
        if length + n <= self.capacity:
            return length, None
        if self.overflow == "shift" and n <= self.capacity - self.n_keep:
            # Like llama.cpp: drop half of what may be dropped, so shifts (each a copy
            # of the whole cache) stay rare; more if this request needs more.
            needed = length + n - self.capacity
            shift = self.shift(max(needed, (length - self.n_keep) // 2))
            return self.length, shift
        raise ContextOverflowError(self._overflow_message(n))

    def commit(self, n: int) -> None:
        """Count ``n`` tokens written at the slots :meth:`reserve` returned."""
        if n < 0:
            raise ValueError(f"commit: n must be >= 0, got {n}")
        if self.length + n > self.capacity:
            raise ContextOverflowError(self._overflow_message(n))
        self.length += n

    def _overflow_message(self, n: int) -> str:
        hint = (f"more than the window left after the n_keep={self.n_keep} kept tokens"
                if self.overflow == "shift" else
                "use a larger capacity or overflow='shift' to slide the window")
        return (f"context overflow: the KV cache holds {self.capacity} tokens (capacity), "
                f"{self.length} are cached and {n} more were requested ({hint})")

    # -- editing ------------------------------------------------------------------------
    def truncate(self, n: int) -> None:
        """Forget every token after the first ``n`` (to reuse a common prompt prefix)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"truncate: n must be in [0, length={self.length}], got {n}")
        self.length = int(n)

    def reset(self) -> None:
        """Empty the cache (the arrays stay allocated)."""
        self.length = 0
        self.n_discarded = 0
        self.shifts = 0

    def shift(self, n_discard: int) -> Shift:
        """Drop the ``n_discard`` oldest tokens after the first ``n_keep``.

        Tokens in slots ``[n_keep + n_discard, length)`` move down to
        ``[n_keep, length - n_discard)`` in every layer and head and ``length`` shrinks by
        ``n_discard``. Returns ``Shift(n_keep, moved, -n_discard)``: a rotary model must
        re-rotate the moved keys by ``delta``.
        """
        if self.k is None:
            raise SmallMindError("this KVCache is closed")
        if self.positional == "learned":
            raise CachePolicyError("a cache of a model with learned absolute positions "
                                   "cannot shift (see check_policy)")
        keep, length = self.n_keep, self.length
        if not 0 <= n_discard <= length - keep:
            raise ValueError(f"shift: n_discard must be in [0, length - n_keep = "
                             f"{max(length - keep, 0)}], got {n_discard}")
        if n_discard == 0:
            return Shift(keep, 0, 0)
        moved = length - keep - n_discard
        src = slice(keep + n_discard, length)
        dst = slice(keep, keep + moved)
        if moved:
            # One (layer, head) block at a time: source and destination overlap, and
            # NumPy buffers overlapping copies, so this bounds that buffer's size.
            for arr in (self.k, self.v):
                for layer in range(self.n_layer):
                    for head in range(self.n_kv_head):
                        arr[layer, head, dst] = arr[layer, head, src]
        self.length = keep + moved
        self.n_discarded += n_discard
        self.shifts += 1
        return Shift(keep, moved, -n_discard)

    # -- access -------------------------------------------------------------------------
    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(k[i], v[i])``, each ``(n_kv_head, capacity, head_dim)``."""
        if not 0 <= i < self.n_layer:
            raise IndexError(f"layer {i} out of range [0, {self.n_layer})")
        return self.k[i], self.v[i]

    def store(self, layer: int, pos0: int, k_rows: np.ndarray, v_rows: np.ndarray) -> None:
        """Write ``n`` tokens' keys and values at slots ``[pos0, pos0 + n)`` of a layer.

        ``k_rows``, ``v_rows``: ``(n, n_kv_head * head_dim)`` (heads side by side, as a
        K/V projection produces them) or ``(n, n_kv_head, head_dim)``.
        """
        k_dst, v_dst = self.layer(layer)
        for name, rows, dst in (("k_rows", k_rows, k_dst), ("v_rows", v_rows, v_dst)):
            rows = np.asarray(rows)
            n = rows.shape[0] if rows.ndim else -1
            if rows.ndim not in (2, 3) or rows.size != n * self.n_kv_head * self.head_dim:
                raise ShapeError(f"store: {name} must be (n, {self.n_kv_head * self.head_dim}) "
                                 f"or (n, {self.n_kv_head}, {self.head_dim}), got {rows.shape}")
            if not 0 <= pos0 <= self.capacity - n:
                raise ShapeError(f"store: slots [{pos0}, {pos0 + n}) are outside the cache "
                                 f"capacity {self.capacity}")
            dst[:, pos0:pos0 + n] = rows.reshape(n, self.n_kv_head, self.head_dim).transpose(1, 0, 2)

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.nbytes + self.v.nbytes

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Give the arrays back to the pool (if any). The cache is unusable afterwards,
        and so are views of ``k`` / ``v`` taken earlier. Idempotent."""
        k, v = self.k, self.v
        self.k = self.v = None  # type: ignore[assignment]  # documented: None after close()
        self.length = 0
        if self._pool is not None and k is not None:
            self._pool.release(k)
            self._pool.release(v)

    def __enter__(self) -> KVCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"KVCache(n_layer={self.n_layer}, n_kv_head={self.n_kv_head}, "
                f"capacity={self.capacity}, head_dim={self.head_dim}, length={self.length}, "
                f"overflow={self.overflow!r}, n_keep={self.n_keep})")
