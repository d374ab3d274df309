"""KVCache: reserve/commit protocol, overflow policies, shifting, truncation, pooling."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401
from smallmind._core._attention import attention, rope, rope_inv_freq
from smallmind._core._pool import BufferPool
from smallmind.errors import ContextOverflowError, ShapeError, SmallMindError
from smallmind.kv_cache import CachePolicyError, KVCache, check_policy


def fill(cache: KVCache, tokens: list[int], on_shift=None) -> None:
    """Append tokens, storing value `tok` in every key/value element of the token."""
    n = len(tokens)
    pos0, shift = cache.reserve(n)
    if shift is not None and on_shift is not None:
        on_shift(*shift)
    width = cache.n_kv_head * cache.head_dim
    rows = np.repeat(np.asarray(tokens, np.float32)[:, None], width, axis=1)
    for layer in range(cache.n_layer):
        cache.store(layer, pos0, rows + 1000 * layer, -rows - 1000 * layer)
    cache.commit(n)


def cached_tokens(cache: KVCache, layer: int = 0, head: int = 0) -> list[int]:
    k = cache.k[layer, head, :cache.length, 0] - 1000 * layer
    v = cache.v[layer, head, :cache.length, 0] + 1000 * layer
    assert np.array_equal(k, -v)
    return [int(t) for t in k]


def test_shapes_and_layer_views():
    cache = KVCache(3, 2, 16, 8)
    assert cache.k.shape == cache.v.shape == (3, 2, 16, 8)
    assert cache.k.dtype == np.float32 and cache.k.flags.c_contiguous
    k1, v1 = cache.layer(1)
    assert k1.shape == (2, 16, 8) and np.shares_memory(k1, cache.k)
    k1[0, 0, 0] = 5.0
    assert cache.k[1, 0, 0, 0] == 5.0
    with pytest.raises(IndexError):
        cache.layer(3)
    assert cache.length == 0 and cache.room == 16


def test_reserve_commit():
    cache = KVCache(1, 1, 10, 4)
    assert cache.reserve(3) == (0, None)
    assert cache.length == 0          # reserving does not count the tokens yet
    cache.commit(3)
    assert cache.reserve(1) == (3, None)
    cache.commit(1)
    assert cache.length == 4 and cache.room == 6


def test_overflow_error_message():
    cache = KVCache(2, 1, 8, 4)
    fill(cache, list(range(6)))
    assert cache.reserve(2) == (6, None)
    with pytest.raises(ContextOverflowError) as info:
        cache.reserve(3)
    msg = str(info.value)
    assert "8" in msg and "capacity" in msg and "6 are cached" in msg and "3 more" in msg
    assert cache.length == 6          # nothing changed
    with pytest.raises(ContextOverflowError):
        cache.commit(3)


def test_store_layout_matches_attention_kernel():
    rng = np.random.default_rng(0)
    n_kv, hd, n_head = 2, 8, 4
    cache = KVCache(1, n_kv, 12, hd)
    k_rows = rng.standard_normal((5, n_kv * hd)).astype(np.float32)
    v_rows = rng.standard_normal((5, n_kv, hd)).astype(np.float32)
    cache.store(0, cache.reserve(5)[0], k_rows, v_rows)
    cache.commit(5)
    np.testing.assert_array_equal(cache.k[0, 1, :5], k_rows[:, hd:])
    np.testing.assert_array_equal(cache.v[0, 1, :5], v_rows[:, 1])
    q = rng.standard_normal((1, n_head * hd)).astype(np.float32)
    k, v = cache.layer(0)
    out = attention(q, k, v, 4, n_head, n_kv)   # runs straight on the cache views
    assert np.all(np.isfinite(out))
    with pytest.raises(ShapeError):
        cache.store(0, 10, k_rows, v_rows)
    with pytest.raises(ShapeError):
        cache.store(0, 0, k_rows[:, :-1], v_rows)


def test_truncate_and_reset():
    cache = KVCache(2, 2, 20, 4)
    fill(cache, [10, 11, 12, 13, 14])
    cache.truncate(3)
    assert cache.length == 3 and cached_tokens(cache) == [10, 11, 12]
    fill(cache, [20, 21])             # reuses the common prefix
    assert cached_tokens(cache, layer=1, head=1) == [10, 11, 12, 20, 21]
    with pytest.raises(ValueError):
        cache.truncate(6)
    with pytest.raises(ValueError):
        cache.truncate(-1)
    cache.reset()
    assert cache.length == 0 and cache.reserve(20) == (0, None)


def test_shift_keeps_prefix_and_latest_in_order():
    cache = KVCache(2, 3, 10, 4, overflow="shift", n_keep=2)
    fill(cache, list(range(100, 110)))             # full
    pos0, shift = cache.reserve(1)                 # discards (10 - 2) // 2 = 4 tokens
    assert shift == (2, 4, -4) and shift.n_discarded == 4
    assert pos0 == 6 == cache.length
    assert cached_tokens(cache) == [100, 101, 106, 107, 108, 109]
    for layer in range(2):
        for head in range(3):
            assert cached_tokens(cache, layer, head) == [100, 101, 106, 107, 108, 109]
    fill(cache, [110])
    assert cached_tokens(cache) == [100, 101, 106, 107, 108, 109, 110]
    assert cache.n_discarded == 4 and cache.shifts == 1


def test_shift_discards_enough_for_a_large_request():
    cache = KVCache(1, 1, 10, 2, overflow="shift", n_keep=1)
    fill(cache, list(range(9)))
    pos0, shift = cache.reserve(7)                  # needs 6 > (9 - 1) // 2 = 4
    assert pos0 == 3 and shift == (1, 2, -6)
    assert cached_tokens(cache) == [0, 7, 8]
    with pytest.raises(ContextOverflowError, match="n_keep=1"):
        cache.reserve(10)                           # more than capacity - n_keep


@given(capacity=st.integers(2, 40), n_keep_frac=st.floats(0, 0.9),
       chunks=st.lists(st.integers(1, 12), min_size=1, max_size=25))
def test_shift_window_property(capacity, n_keep_frac, chunks):
    """After any sequence of appends, the cache holds the first n_keep tokens followed
    by the most recent ones, in order, and never more than capacity."""
    n_keep = int(n_keep_frac * capacity)
    shadow: list[int] = []   # what a caller tracking tokens through the returned shifts believes

    def follow(start, count, delta):
        assert start == n_keep and count == len(shadow) - start + delta
        del shadow[start:start - delta]

    cache = KVCache(1, 1, capacity, 1, overflow="shift", n_keep=n_keep)
    seen: list[int] = []
    for size in chunks:
        tokens = list(range(len(seen), len(seen) + size))
        if cache.length + size > capacity and size > capacity - n_keep:
            with pytest.raises(ContextOverflowError):
                cache.reserve(size)
            continue
        shadow += tokens   # the caller appends, then drops what a shift reports
        fill(cache, tokens,
             on_shift=lambda start, count, delta, size=size: follow(start, count + size, delta))
        seen += tokens
        got = cached_tokens(cache)
        assert got == shadow
        assert len(got) <= capacity
        kept = min(n_keep, len(seen))
        assert got[:kept] == seen[:kept]
        tail = got[kept:]
        assert tail == seen[len(seen) - len(tail):]
        assert cache.n_discarded == len(seen) - len(got)


def test_shift_rerotation_matches_fresh_rotation():
    """What the Llama model does on a shift: moved keys re-rotated by delta equal keys
    rotated directly at their new slots."""
    hd, n_kv = 16, 2
    inv = rope_inv_freq(hd, 10000.0)
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((12, n_kv * hd)).astype(np.float32)   # un-rotated keys

    def rerotate(start, count, delta):
        for head in range(n_kv):
            rope(cache.k[0, head, start:start + count], float(delta), 1, hd, inv, pos_step=0.0)

    cache = KVCache(1, n_kv, 12, hd, overflow="shift", n_keep=3)
    keys = raw.copy()
    rope(keys, 0.0, n_kv, hd, inv)                                 # positions 0..11
    cache.store(0, cache.reserve(12)[0], keys, keys)
    cache.commit(12)
    rerotate(*cache.shift(5))
    kept = np.concatenate([raw[:3], raw[8:]])                      # slots 0..6 now
    expected = kept.copy()
    rope(expected, 0.0, n_kv, hd, inv)
    got = cache.k[0].transpose(1, 0, 2)[:7].reshape(7, n_kv * hd)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_shift_calls_nothing_back_and_returns_what_moved():
    cache = KVCache(1, 1, 4, 2, overflow="shift")
    fill(cache, [1, 2, 3, 4])
    pos0, shift = cache.reserve(1)
    assert (pos0, shift) == (2, (0, 2, -2))
    assert cached_tokens(cache) == [3, 4]
    assert not hasattr(cache, "on_shift")  # no callback: no reference cycle through the cache


def test_learned_positions_cannot_shift():
    with pytest.raises(CachePolicyError, match="learned"):
        KVCache(1, 1, 8, 2, overflow="shift", positional="learned")
    with pytest.raises(CachePolicyError, match="learned"):
        check_policy(True, "shift")
    check_policy(True, "error")
    check_policy(False, "shift")
    with pytest.raises(CachePolicyError):
        check_policy(False, "wrap")
    cache = KVCache(1, 1, 8, 2, positional="learned")
    fill(cache, [1, 2, 3])
    with pytest.raises(CachePolicyError):
        cache.shift(1)
    assert isinstance(CachePolicyError("x"), (SmallMindError, ValueError))


@pytest.mark.parametrize("kwargs", [
    dict(n_layer=0), dict(capacity=-1), dict(head_dim=2.5), dict(n_kv_head=None),
])
def test_bad_dimensions(kwargs):
    args = dict(n_layer=1, n_kv_head=1, capacity=4, head_dim=2)
    args.update(kwargs)
    with pytest.raises(ShapeError):
        KVCache(**args)


@pytest.mark.parametrize("kwargs", [
    dict(overflow="wrap"), dict(positional="alibi"), dict(n_keep=4), dict(n_keep=-1),
])
def test_bad_policies(kwargs):
    with pytest.raises(CachePolicyError):
        KVCache(1, 1, 4, 2, **kwargs)


def test_manual_shift_bounds():
    cache = KVCache(1, 1, 8, 2, n_keep=2, positional="none")
    fill(cache, [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        cache.shift(4)
    assert cache.shift(0).n_discarded == 0 and cache.length == 5
    assert cache.shift(3) == (2, 0, -3) and cached_tokens(cache) == [0, 1]  # a drop, nothing moved


def test_pool_buffers_are_released_on_close():
    pool = BufferPool()
    cache = KVCache(4, 2, 100, 8, pool=pool)
    s = pool.stats()
    assert s.live_buffers == 2 and s.live_bytes >= cache.nbytes
    assert pool.owns(cache.k) and pool.owns(cache.v)
    assert cache.k.ctypes.data % 64 == 0
    fill(cache, [1, 2])
    cache.close()
    s = pool.stats()
    assert s.live_bytes == 0 and s.pooled_buffers == 2
    cache.close()                                   # idempotent
    with pytest.raises(SmallMindError, match="closed"):
        cache.reserve(1)
    with KVCache(4, 2, 100, 8, pool=pool) as again:  # same bucket: reused buffers
        assert pool.stats().hits == 2
        assert again.k.shape == (4, 2, 100, 8)
    assert pool.stats().live_bytes == 0


class _NoNumpy:
    def __getattr__(self, name):
        raise AssertionError(f"numpy.{name} used on the per-token path")


def test_reserve_commit_use_no_numpy_and_retain_nothing(monkeypatch):
    import tracemalloc

    import smallmind.kv_cache as kv_module
    cache = KVCache(2, 2, 4096, 8)
    cache.reserve(1)
    cache.commit(1)
    monkeypatch.setattr(kv_module, "np", _NoNumpy())
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            cache.reserve(1)
            cache.commit(1)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 256      # a few ints at most, nothing per token
    assert cache.length == 1001
