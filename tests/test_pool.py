"""BufferPool: bucketing, alignment, reuse, statistics, thread safety, bad releases."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smallmind  # noqa: F401
from smallmind._core._pool import ALIGNMENT, BufferPool, PoolStats, default_pool


def bucket_bytes(n: int) -> int:
    size = 16
    while size < n:
        size *= 2
    return 4 * size


def test_acquire_gives_aligned_contiguous_float32():
    pool = BufferPool()
    for shape in [(1,), (3, 5), (7, 11, 13), (0,), (0, 4), 17, np.int64(9), [2, 3], (1000, 3)]:
        arr = pool.acquire(shape)
        want = (int(shape),) if np.ndim(shape) == 0 else tuple(shape)
        assert arr.shape == want and arr.dtype == np.float32
        assert arr.flags.c_contiguous and arr.flags.writeable
        assert arr.ctypes.data % ALIGNMENT == 0
        arr[...] = 1.0  # the whole array is usable memory
        pool.release(arr)


def test_zero_fill():
    pool = BufferPool()
    a = pool.acquire((40,))
    a[:] = 7.0
    pool.release(a)
    b = pool.acquire((40,), zero=True)
    assert b.ctypes.data == a.ctypes.data
    assert np.all(b == 0.0)


def test_same_bucket_reuses_the_buffer_and_other_buckets_do_not():
    pool = BufferPool()
    a = pool.acquire((100,))            # bucket 128 floats
    addr = a.ctypes.data
    pool.release(a)
    b = pool.acquire((10, 12))          # 120 floats: same bucket
    assert b.ctypes.data == addr
    c = pool.acquire((129,))            # bucket 256: a new buffer
    assert c.ctypes.data != addr
    s = pool.stats()
    assert (s.hits, s.misses) == (1, 2)
    pool.release(b)
    pool.release(c)


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), min_size=1, max_size=60))
def test_stats_add_up(ops):
    pool = BufferPool()
    live: list[np.ndarray] = []
    acquires = live_bytes = peak = pooled = 0
    freed_sizes: list[int] = []
    for do_acquire, n in ops:
        if do_acquire or not live:
            arr = pool.acquire((n,))
            acquires += 1
            size = bucket_bytes(n)
            if size in freed_sizes:
                freed_sizes.remove(size)
                pooled -= size
            live.append(arr)
            live_bytes += size
            peak = max(peak, live_bytes)
        else:
            arr = live.pop(n % len(live))
            size = bucket_bytes(arr.size)
            pool.release(arr)
            live_bytes -= size
            pooled += size
            freed_sizes.append(size)
        s = pool.stats()
        assert s.hits + s.misses == acquires
        assert s.live_bytes == live_bytes
        assert s.peak_bytes == peak
        assert s.pooled_bytes == pooled
        assert s.live_buffers == len(live)
    for arr in live:
        pool.release(arr)
    s = pool.stats()
    assert s.live_bytes == 0 and s.live_buffers == 0
    assert s.pooled_bytes == pooled + sum(bucket_bytes(a.size) for a in live)
    pool.clear()
    s = pool.stats()
    assert s.pooled_bytes == 0 and s.pooled_buffers == 0
    assert s.hits + s.misses == acquires  # counters survive clear()


def test_live_buffers_never_alias():
    pool = BufferPool()
    arrays = [pool.acquire((n,)) for n in [5, 5, 5, 16, 16, 300]]
    for i, a in enumerate(arrays):
        a[:] = i
    for i, a in enumerate(arrays):
        assert np.all(a == i)
    for a in arrays:
        pool.release(a)


def test_releasing_a_foreign_array_raises():
    pool = BufferPool()
    with pytest.raises(ValueError, match="not acquired from this pool"):
        pool.release(np.zeros(16, np.float32))


@pytest.mark.parametrize("bad", ["not an array", None, [1.0, 2.0]])
def test_releasing_a_non_array_raises(bad):
    with pytest.raises(ValueError, match="takes an array"):
        BufferPool().release(bad)


def test_double_release_and_other_pool_raise():
    one, two = BufferPool(), BufferPool()
    a = one.acquire((8, 8))
    with pytest.raises(ValueError):
        two.release(a)
    one.release(a)
    with pytest.raises(ValueError, match="already released"):
        one.release(a)
    s = one.stats()
    assert s.releases == 1 and s.live_bytes == 0


def test_offset_view_is_not_accepted():
    pool = BufferPool()
    a = pool.acquire((32,))
    with pytest.raises(ValueError):
        pool.release(a[1:])
    assert pool.owns(a) and not pool.owns(a[1:])
    pool.release(a.reshape(4, 8))   # a view starting at the same address is the same buffer
    assert not pool.owns(a)


def test_bad_shapes():
    pool = BufferPool()
    with pytest.raises(ValueError):
        pool.acquire((3, -1))
    with pytest.raises(MemoryError):
        pool.acquire((1 << 40, 1 << 40))
    with pytest.raises(TypeError):
        pool.acquire((2.5,))
    assert pool.stats().misses == 0


def test_max_pooled_bytes_caps_free_memory():
    pool = BufferPool(max_pooled_bytes=1024)
    arrays = [pool.acquire((64,)) for _ in range(8)]   # 256 bytes each
    for a in arrays:
        pool.release(a)
    s = pool.stats()
    assert s.pooled_bytes == 1024 and s.pooled_buffers == 4 and s.releases == 8


def test_concurrent_acquire_release_keeps_stats_consistent():
    pool = BufferPool()
    n_threads, rounds = 4, 2000
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        held: list[np.ndarray] = []
        try:
            start.wait()
            for _ in range(rounds):
                if held and rng.random() < 0.5:
                    arr = held.pop(int(rng.integers(len(held))))
                    # nobody else may have written into a buffer we hold
                    assert np.all(arr == arr.flat[0]) if arr.size else True
                    pool.release(arr)
                else:
                    arr = pool.acquire((int(rng.integers(1, 3000)),))
                    arr[:] = seed
                    held.append(arr)
            for arr in held:
                assert np.all(arr == seed)
                pool.release(arr)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    s = pool.stats()
    assert s.live_bytes == 0 and s.live_buffers == 0
    assert s.hits + s.misses == s.releases
    assert s.peak_bytes > 0 and s.pooled_bytes > 0


def test_default_pool_is_shared():
    assert default_pool() is default_pool()
    assert isinstance(default_pool().stats(), PoolStats)
