# cython: language_level=3
"""A pool of 64-byte-aligned float32 buffers, bucketed by power-of-two size.

Sessions, KV caches and workspaces take their arrays from a :class:`BufferPool` and
give them back when done, so a server opening and closing sessions reuses the same
memory instead of asking the allocator (and the kernel, for large blocks) each time.

``acquire(shape)`` returns a C-contiguous float32 NumPy array whose data pointer is a
multiple of 64 (one cache line, and the widest vector load), viewing a buffer of the
smallest power-of-two number of floats (at least 16) that holds it. ``release(arr)``
hands the buffer back to its bucket. The array must not be used after its release:
the next ``acquire`` of that bucket returns the same memory.

Thread safe: one lock guards the free lists and the counters; it is held only for a
few dict/list operations (allocation happens outside it).
"""
import mmap
import operator
from dataclasses import dataclass

import threading

import numpy as np

cimport numpy as cnp
from libc.stdint cimport uintptr_t

cnp.import_array()

#: Buffer alignment in bytes.
ALIGNMENT = 64
# Smallest bucket: 2**4 floats = 64 bytes, so every buffer covers whole cache lines.
cdef int _MIN_EXP = 4
cdef int _MAX_DIMS = 32


@dataclass(frozen=True)
class PoolStats:
    """Counters of a :class:`BufferPool` at one moment.

    ``hits + misses`` is the number of ``acquire`` calls; bytes are whole bucket sizes.
    """

    hits: int            # acquires served from a free buffer
    misses: int          # acquires that allocated a new buffer
    releases: int        # successful release() calls
    live_bytes: int      # bytes of buffers currently handed out
    peak_bytes: int      # the largest live_bytes ever seen
    pooled_bytes: int    # bytes of free buffers kept for reuse
    live_buffers: int
    pooled_buffers: int


#: Buffers from this size up are anonymous memory maps (page-aligned). NumPy asks the
#: kernel for transparent huge pages on its large arrays, so one write anywhere in each
#: 2 MB of a KV cache would make all of it resident; a plain map grows page by page as the
#: context fills.
MMAP_BYTES = 1 << 22


cdef object _new_buffer(int exp):
    """A 1-D float32 array of 2**exp elements starting on a 64-byte boundary."""
    cdef Py_ssize_t nbytes = (<Py_ssize_t>1 << exp) * 4
    if nbytes >= MMAP_BYTES:
        return np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.float32)
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    cdef uintptr_t addr = <uintptr_t> cnp.PyArray_DATA(raw)
    cdef Py_ssize_t offset = <Py_ssize_t>((ALIGNMENT - addr % ALIGNMENT) % ALIGNMENT)
    # The view keeps `raw` alive through its base chain.
    return raw[offset:offset + nbytes].view(np.float32)


cdef class BufferPool:
    """Size-bucketed pool of aligned float32 buffers handed out as NumPy arrays.

    Parameters
    ----------
    max_pooled_bytes : int or None
        Free buffers kept for reuse are capped at this many bytes; a buffer released
        beyond the cap is freed instead. None (default): no cap.
    """

    cdef object _lock
    cdef dict _free                 # bucket exponent -> list of free buffers
    cdef dict _live                 # data address -> (buffer, bucket exponent)
    cdef Py_ssize_t _hits, _misses, _releases
    cdef Py_ssize_t _live_bytes, _peak_bytes, _pooled_bytes, _pooled_buffers
    cdef Py_ssize_t _max_pooled     # -1: no cap

    def __cinit__(self, max_pooled_bytes=None):
        # Re-entrant: a garbage collection inside a locked section may finalise a session
        # whose __del__ releases its buffers into this pool from the same thread (a plain
        # lock deadlocks there). Only session set-up and tear-down take it, never decoding.
        self._lock = threading.RLock()
        self._free = {}
        self._live = {}
        if max_pooled_bytes is None:
            self._max_pooled = -1
        else:
            if max_pooled_bytes < 0:
                raise ValueError(f"max_pooled_bytes must be >= 0 or None, got {max_pooled_bytes}")
            self._max_pooled = max_pooled_bytes

    cdef inline void _enter(self):
        self._lock.acquire()

    cdef inline void _exit(self):
        self._lock.release()

    def acquire(self, shape, *, bint zero=False):
        """A float32 C-contiguous array of ``shape`` from the pool (contents undefined
        unless ``zero``). Give it back with :meth:`release`."""
        cdef cnp.npy_intp dims[32]
        cdef int nd, i, exp
        cdef Py_ssize_t n = 1, d
        if not isinstance(shape, tuple):
            # an int (Python or NumPy) means a 1-D array; anything else iterable a shape
            shape = (operator.index(shape),) if hasattr(shape, "__index__") else tuple(shape)
        nd = len(shape)
        if nd > _MAX_DIMS:
            raise ValueError(f"shape {shape}: at most {_MAX_DIMS} dimensions")
        for i in range(nd):
            d = shape[i]
            if d < 0:
                raise ValueError(f"shape {tuple(shape)}: dimensions must be >= 0")
            if d > 0 and n > (<Py_ssize_t>1 << 60) // d:
                raise MemoryError(f"shape {tuple(shape)} is too large")
            n *= d
            dims[i] = d
        exp = _MIN_EXP
        while (<Py_ssize_t>1 << exp) < n:
            exp += 1

        buf = None
        self._enter()
        try:
            free = self._free.get(exp)
            if free:
                buf = free.pop()
                self._pooled_bytes -= (<Py_ssize_t>1 << exp) * 4
                self._pooled_buffers -= 1
                self._hits += 1
            else:
                self._misses += 1
        finally:
            self._exit()
        if buf is None:
            try:
                buf = _new_buffer(exp)
            except BaseException:
                self._enter()
                self._misses -= 1   # nothing was handed out
                self._exit()
                raise

        cdef void* data = cnp.PyArray_DATA(buf)
        self._enter()
        self._live[<uintptr_t>data] = (buf, exp)
        self._live_bytes += (<Py_ssize_t>1 << exp) * 4
        if self._live_bytes > self._peak_bytes:
            self._peak_bytes = self._live_bytes
        self._exit()

        arr = cnp.PyArray_SimpleNewFromData(nd, dims, cnp.NPY_FLOAT32, data)
        cnp.set_array_base(arr, buf)
        if zero:
            arr.fill(0.0)
        return arr

    def release(self, arr):
        """Give back an array from :meth:`acquire` (or a view starting at the same
        address). Raises ValueError if it is not from this pool or already released."""
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"release() takes an array from BufferPool.acquire, "
                             f"got {type(arr).__name__}")
        cdef uintptr_t key = <uintptr_t> cnp.PyArray_DATA(<cnp.ndarray>arr)
        cdef int exp
        cdef Py_ssize_t nbytes
        dropped = None
        self._enter()
        try:
            entry = self._live.pop(key, None)
            if entry is not None:
                buf, exp = entry
                nbytes = (<Py_ssize_t>1 << exp) * 4
                self._live_bytes -= nbytes
                self._releases += 1
                if self._max_pooled >= 0 and self._pooled_bytes + nbytes > self._max_pooled:
                    dropped = buf   # freed below, outside the lock
                else:
                    free = self._free.get(exp)
                    if free is None:
                        self._free[exp] = [buf]
                    else:
                        free.append(buf)
                    self._pooled_bytes += nbytes
                    self._pooled_buffers += 1
        finally:
            self._exit()
        if entry is None:
            raise ValueError("release(): this array was not acquired from this pool, "
                             "or was already released")
        del dropped

    def stats(self):
        """A :class:`PoolStats` snapshot (taken under the lock, so it is consistent)."""
        self._enter()
        try:
            return PoolStats(hits=self._hits, misses=self._misses, releases=self._releases,
                             live_bytes=self._live_bytes, peak_bytes=self._peak_bytes,
                             pooled_bytes=self._pooled_bytes, live_buffers=len(self._live),
                             pooled_buffers=self._pooled_buffers)
        finally:
            self._exit()

    def clear(self):
        """Free every pooled (released) buffer. Buffers still handed out stay valid
        and can still be released; the counters are kept."""
        self._enter()
        try:
            free = self._free
            self._free = {}
            self._pooled_bytes = 0
            self._pooled_buffers = 0
        finally:
            self._exit()
        del free

    def owns(self, arr):
        """True if ``arr`` starts at a buffer currently handed out by this pool."""
        if not isinstance(arr, np.ndarray):
            return False
        cdef uintptr_t key = <uintptr_t> cnp.PyArray_DATA(<cnp.ndarray>arr)
        self._enter()
        try:
            return key in self._live
        finally:
            self._exit()

    def __repr__(self):
        s = self.stats()
        return (f"BufferPool(live={s.live_bytes} B in {s.live_buffers}, "
                f"pooled={s.pooled_bytes} B in {s.pooled_buffers}, "
                f"hits={s.hits}, misses={s.misses})")


cdef BufferPool _DEFAULT = BufferPool()


def default_pool():
    """The process-wide pool used when a caller passes none."""
    return _DEFAULT
