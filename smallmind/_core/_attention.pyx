# cython: language_level=3
"""Causal attention over a KV cache, and rotary position embeddings (RoPE).

``attention`` is fused and tiled: a tile of consecutive query rows and the query heads
that share a KV head (up to 32 query vectors) walks the cached keys in blocks; each
block of K and V, read once, serves every vector of the tile while it is in L1 (the
saving of grouped-query attention and of prompt processing alike). Per vector a block
of scores goes to a small stack buffer, is exponentiated against a running maximum
(online softmax), and the weighted V rows accumulate in registers. No T x T matrix
ever exists, and no block wholly outside a row's causal window is touched.

Every step of a (row, head)'s arithmetic is fixed by its own position and keys, not by
the tile, the call or the thread it runs in: a row gives the same bits decoded alone,
in any chunk of a prompt, after a reused prefix, or in a batch (what the batch and
serving tests compare).

The SIMD inner loops (dot products against 8 keys at once, the exp of _simd.h, the
P.V accumulation) are C with AVX2/FMA intrinsics, in ``_attention.h``; the loops over
rows and heads, threading and validation are Cython. Threads come from the pool the
matrix products use (``_threadpool.h``, through ``_matmul.parallel_chunks``).

Python API (float32 NumPy arrays, validated once, then the nogil kernels run):

* ``attention(q, k_cache, v_cache, pos0, n_head, n_kv_head, scale=None, window=0,
  out=None, n_threads=1)``
* ``rope(x, pos0, n_heads, head_dim, inv_freq, n_rot=None, neox=False, pos_step=1.0)``
* ``rope_inv_freq(n_rot, theta, scale=1.0)``
"""
import math

import numpy as np

cimport numpy as cnp
from libc.math cimport cos, sin

from smallmind._core._matmul cimport parallel_chunks, pool_workers_spin

from smallmind.errors import ShapeError

cnp.import_array()


cdef extern from "_attention.h" nogil:
    void att_tile(const float* q, Py_ssize_t ldq, const float* k, const float* v, Py_ssize_t pos,
                  int n_rows, int n_g, int hd, float scale, Py_ssize_t window, float* out,
                  Py_ssize_t ldo)
    int att_tile_rows(int n_g, int hd)
    Py_ssize_t att_next_task(Py_ssize_t* counter)


# RoPE computes cos/sin for this many frequency pairs at a time on the stack, then
# applies them to every head of the row (so any n_rot works without allocating).
cdef enum:
    _ROPE_CHUNK = 128


# Work (query rows x keys x query heads x head_dim multiply-adds, for the scores alone)
# from which a call is split over threads while the pool's workers spin: a job then costs
# ~0.25 us beyond its work (decode_budget.py's pool job us, Zen 3), and a late worker costs
# nothing (the caller claims every task it has not), so a split pays from a few us of work:
# SmolLM2's 9 heads x 64 from 28 cached positions on. While they sleep (a busy machine)
# each job wakes them through the kernel: then only from _MIN_THREADED_WORK.
cdef enum:
    _MIN_SPLIT_WORK = 1 << 14

# Work below which a sequence's attention counts as small (attention_single_threaded): a
# batch runs such segments side by side, one thread each, rather than one after another
# split over every thread.
cdef enum:
    _MIN_THREADED_WORK = 1 << 16


# One call's work, split into tasks: a task is one tile of up to `rows` consecutive query
# rows and a set of `sub` query heads sharing a KV head, so each K and V block is read
# once for all of them. Tasks write disjoint slices of out; lanes claim tasks one at a
# time from next_task until none are left.
ctypedef struct _Job:
    const float* q
    Py_ssize_t ldq
    const float* k
    const float* v
    Py_ssize_t head_stride
    Py_ssize_t pos0
    Py_ssize_t n_q
    int n_kv_head
    int head_dim
    float scale
    Py_ssize_t window
    float* out
    Py_ssize_t ldo
    int group                   # query heads per KV head
    int rows                    # query rows per tile
    Py_ssize_t n_tiles
    int sub                     # query heads per task
    int subs_per_group
    Py_ssize_t n_tasks
    Py_ssize_t next_task        # claimed atomically (att_next_task)


cdef inline void _attend_tile(const _Job* job, Py_ssize_t tile, int h0, int n_g) noexcept nogil:
    """Rows [tile * rows, ...) (at most job.rows of them), heads [h0, h0 + n_g) of one KV head."""
    cdef Py_ssize_t i = tile * job.rows
    cdef Py_ssize_t kv_off = (h0 // job.group) * job.head_stride
    att_tile(job.q + i * job.ldq + h0 * job.head_dim, job.ldq, job.k + kv_off, job.v + kv_off,
             job.pos0 + i, <int>min(<Py_ssize_t>job.rows, job.n_q - i), n_g, job.head_dim, job.scale,
             job.window, job.out + i * job.ldo + h0 * job.head_dim, job.ldo)


cdef void _run_lane(const void* arg, Py_ssize_t lane) noexcept nogil:
    """One thread's share: claims tasks until none are left."""
    cdef _Job* job = <_Job*>arg
    cdef Py_ssize_t task, unit
    cdef int h0
    while True:
        task = att_next_task(&job.next_task)
        if task >= job.n_tasks:
            return
        # Later rows see more keys (causal), so they go first: the cheap early rows
        # then even out the lanes at the end.
        unit = task // job.subs_per_group
        h0 = <int>(unit % job.n_kv_head) * job.group + <int>(task % job.subs_per_group) * job.sub
        _attend_tile(job, job.n_tiles - 1 - unit // job.n_kv_head, h0,
                     min(job.sub, (h0 // job.group + 1) * job.group - h0))


# Decode with lanes sharing a KV head (Gemma 3: 4 query heads on 1 KV head) has every lane
# read all of the head's K and V, so one core's bandwidth streams the cache from memory.
# From this many bytes of K and V, the lanes first read disjoint slices of them (a job of
# its own), so the memory streams on every core, and the heads then find them in the caches
# (their own or a neighbour's). Only loads: the arithmetic is untouched.
cdef enum:
    _SHARED_READ_MIN_BYTES = 1 << 16


ctypedef struct _TouchJob:
    const float* k
    const float* v
    Py_ssize_t head_stride
    int n_kv_head
    Py_ssize_t first        # floats from the start of a head's rows: the window's first key
    Py_ssize_t count        # floats of each head's K (and V) rows to read
    Py_ssize_t n_chunks
    float sink              # a sum of the loads, so that they are not optimised away


cdef void _touch_chunk(const void* arg, Py_ssize_t c) noexcept nogil:
    cdef _TouchJob* job = <_TouchJob*>arg
    cdef Py_ssize_t per = (job.count + job.n_chunks - 1) // job.n_chunks
    cdef Py_ssize_t a = job.first + c * per, b = min(a + per, job.first + job.count), i
    cdef int h
    cdef float acc = 0.0
    cdef const float* k
    cdef const float* v
    for h in range(job.n_kv_head):
        k = job.k + h * job.head_stride
        v = job.v + h * job.head_stride
        i = a
        while i < b:  # one load per 64-byte line
            acc += k[i] + v[i]
            i += 16
    job.sink += acc  # racy on purpose: the value is never used


cdef void _read_shared_kv(const float* k, const float* v, Py_ssize_t head_stride, Py_ssize_t pos0,
                          int n_kv_head, int head_dim, Py_ssize_t window, int lanes) noexcept nogil:
    cdef _TouchJob job
    cdef Py_ssize_t first_key = 0 if window <= 0 else max(<Py_ssize_t>0, pos0 - window + 1)
    job.k, job.v, job.head_stride, job.n_kv_head = k, v, head_stride, n_kv_head
    job.first = first_key * head_dim
    job.count = (pos0 - first_key) * head_dim  # the cached keys; the new one is in cache
    job.n_chunks = lanes
    job.sink = 0.0
    if 2 * job.count * n_kv_head * <Py_ssize_t>sizeof(float) >= _SHARED_READ_MIN_BYTES:
        parallel_chunks(lanes, lanes, _touch_chunk, &job)


cdef bint attention_single_threaded(Py_ssize_t n_q, Py_ssize_t pos0, int n_head,
                                    int head_dim) noexcept nogil:
    return <double>n_q * (pos0 + n_q) * n_head * head_dim < _MIN_THREADED_WORK


cdef void attention(const float* q, Py_ssize_t n_q, Py_ssize_t ldq,
                    const float* k, const float* v, Py_ssize_t head_stride, Py_ssize_t pos0,
                    int n_head, int n_kv_head, int head_dim, float scale, Py_ssize_t window,
                    float* out, Py_ssize_t ldo, int n_threads) noexcept nogil:
    cdef _Job job
    cdef Py_ssize_t units, lanes = n_threads, t
    cdef int j
    if n_q <= 0:
        return
    job.q, job.ldq, job.k, job.v, job.head_stride = q, ldq, k, v, head_stride
    job.pos0, job.n_q, job.n_kv_head, job.head_dim = pos0, n_q, n_kv_head, head_dim
    job.scale, job.window, job.out, job.ldo = scale, window, out, ldo
    job.group = n_head // n_kv_head
    # Tiles of rows x heads: each key block loaded serves all their query vectors.
    job.rows = <int>min(<Py_ssize_t>att_tile_rows(job.group, head_dim), n_q)
    job.n_tiles = (n_q + job.rows - 1) // job.rows
    cdef double work = <double>n_q * (pos0 + n_q) * n_head * head_dim
    if lanes <= 1 or work < _MIN_SPLIT_WORK or (work < _MIN_THREADED_WORK and not pool_workers_spin()):
        for t in range(job.n_tiles):
            for j in range(n_kv_head):
                _attend_tile(&job, t, j * job.group, job.group)
        return
    job.sub = job.group
    # Too few (tile, KV head) units to share evenly over the lanes (decode with few KV
    # heads: SmolLM2's 3 on 2 threads left one lane idle a third of the time): split each
    # group into smaller sets of query heads, 2 or more tasks per lane, trading K/V reuse
    # (from L1/L2 at these sizes) for balance; sets of 2 or 3 heads still share each key
    # load (SmolLM2 decode: 6 tasks of 2 and 1 heads, not 9 of 1). A head's result does
    # not depend on the split.
    units = job.n_tiles * n_kv_head
    if units < lanes and (job.group * units) % lanes == 0 and job.group % (job.group * units // lanes) == 0:
        # The heads share out evenly with whole sets inside one group (Gemma 3 decode: 4 query
        # heads on 1 KV head, 2 lanes): one task per lane, each reading K and V once for all
        # its heads (as 1-head tasks, each lane read them once per head).
        job.sub = <int>(job.group * units // lanes)
    elif units < 4 * lanes:
        job.sub = max(1, <int>(job.group * units // (2 * lanes)))
    job.subs_per_group = (job.group + job.sub - 1) // job.sub
    job.n_tasks = units * job.subs_per_group
    job.next_task = 0
    lanes = min(lanes, job.n_tasks)
    if n_q == 1 and units < lanes and job.sub < job.group and pool_workers_spin():
        _read_shared_kv(k, v, head_stride, pos0, n_kv_head, head_dim, window, <int>lanes)
    parallel_chunks(<int>lanes, lanes, _run_lane, &job)


cdef inline void _angles(float* cs, float* sn, double pos, const float* inv_freq,
                         int n) noexcept nogil:
    """cs[j], sn[j] = cos, sin(pos * inv_freq[j]) for j < n."""
    cdef int j
    cdef double angle
    for j in range(n):
        # Angles in double: at position 10^4 a float32 product would already be off by
        # ~1e-3 radians.
        angle = pos * <double>inv_freq[j]
        cs[j] = <float>cos(angle)
        sn[j] = <float>sin(angle)


cdef inline void _rotate_heads(float* row, int n_heads, int head_dim, int half, int j0, int j1,
                               const float* cs, const float* sn, bint neox) noexcept nogil:
    """Pairs j0 <= j < j1 of every head of one row, pair j by the angle cs[j - j0], sn[j - j0]."""
    cdef int j, hh
    cdef float a, b, c, s
    cdef float* xh
    for hh in range(n_heads):
        xh = row + hh * head_dim
        if neox:
            for j in range(j0, j1):
                a = xh[j]
                b = xh[j + half]
                c = cs[j - j0]
                s = sn[j - j0]
                xh[j] = a * c - b * s
                xh[j + half] = a * s + b * c
        else:
            for j in range(j0, j1):
                a = xh[2 * j]
                b = xh[2 * j + 1]
                c = cs[j - j0]
                s = sn[j - j0]
                xh[2 * j] = a * c - b * s
                xh[2 * j + 1] = a * s + b * c


cdef void rope(float* x, Py_ssize_t n_rows, Py_ssize_t ldx, int n_heads, int head_dim,
               int n_rot, double pos0, double pos_step, const float* inv_freq,
               bint neox) noexcept nogil:
    cdef float cs[_ROPE_CHUNK]
    cdef float sn[_ROPE_CHUNK]
    cdef int half = n_rot // 2
    cdef int j0, j1
    cdef Py_ssize_t i
    # With pos_step == 0 every row turns by the same angles: compute them once.
    cdef bint same_angles = pos_step == 0.0 and half <= _ROPE_CHUNK
    for i in range(n_rows):
        j0 = 0
        while j0 < half:
            j1 = j0 + _ROPE_CHUNK if j0 + _ROPE_CHUNK < half else half
            if not (same_angles and i > 0):
                _angles(cs, sn, pos0 + <double>i * pos_step, inv_freq + j0, j1 - j0)
            _rotate_heads(x + i * ldx, n_heads, head_dim, half, j0, j1, cs, sn, neox)
            j0 = j1


cdef void rope_angles(float* cs, float* sn, Py_ssize_t n_rows, int n_rot, double pos0,
                      const float* inv_freq) noexcept nogil:
    cdef int half = n_rot // 2
    cdef Py_ssize_t i
    for i in range(n_rows):
        _angles(cs + i * half, sn + i * half, pos0 + <double>i, inv_freq, half)


cdef void rope_rotate(float* x, Py_ssize_t n_rows, Py_ssize_t ldx, int n_heads, int head_dim,
                      int n_rot, const float* cs, const float* sn, bint neox) noexcept nogil:
    cdef int half = n_rot // 2
    cdef Py_ssize_t i
    for i in range(n_rows):
        _rotate_heads(x + i * ldx, n_heads, head_dim, half, 0, half, cs + i * half, sn + i * half, neox)


# ----------------------------------------------------------------------------------
# Python wrappers
# ----------------------------------------------------------------------------------

cdef Py_ssize_t _row_stride(object arr, str name, Py_ssize_t n_cols, bint writable) except -1:
    """Row stride in floats of a 2-D float32 array with contiguous rows of n_cols."""
    if not isinstance(arr, np.ndarray):
        raise ShapeError(f"{name}: expected a numpy float32 array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray> arr
    if a.dtype != np.float32:
        raise ShapeError(f"{name}: expected float32, got {a.dtype}")
    if a.ndim != 2 or a.shape[1] != n_cols:
        raise ShapeError(f"{name}: expected shape (rows, {n_cols}), got {arr.shape}")
    if writable and not a.flags.writeable:
        raise ShapeError(f"{name}: array is read-only")
    if a.shape[0] <= 1:
        return n_cols
    if (n_cols > 1 and a.strides[1] != 4) or a.strides[0] % 4 != 0 or a.strides[0] < 4 * n_cols:
        raise ShapeError(f"{name}: rows must be contiguous float32 and not overlap "
                         f"(strides {arr.strides})")
    return a.strides[0] // 4


cdef Py_ssize_t _cache_head_stride(object arr, str name) except -1:
    """Head stride in floats of a (n_kv_head, capacity, head_dim) float32 cache."""
    if not isinstance(arr, np.ndarray):
        raise ShapeError(f"{name}: expected a numpy float32 array, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray> arr
    if a.dtype != np.float32:
        raise ShapeError(f"{name}: expected float32, got {a.dtype}")
    if a.ndim != 3:
        raise ShapeError(f"{name}: expected shape (n_kv_head, capacity, head_dim), got {arr.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise ShapeError(f"{name}: empty cache, shape {arr.shape}")
    cdef Py_ssize_t hd = a.shape[2], cap = a.shape[1]
    if (hd > 1 and a.strides[2] != 4) or (cap > 1 and a.strides[1] != 4 * hd):
        raise ShapeError(f"{name}: each head's (capacity, head_dim) block must be C-contiguous "
                         f"(strides {arr.strides})")
    if a.shape[0] == 1:
        return cap * hd
    if a.strides[0] % 4 != 0 or a.strides[0] < 4 * cap * hd:
        raise ShapeError(f"{name}: heads must not overlap (strides {arr.strides})")
    return a.strides[0] // 4


cdef inline bint _overlaps(const float* a, Py_ssize_t a_len, const float* b,
                          Py_ssize_t b_len) noexcept:
    return a < b + b_len and b < a + a_len


def _py_attention(q, k_cache, v_cache, Py_ssize_t pos0, int n_head, int n_kv_head,
                  scale=None, Py_ssize_t window=0, out=None, int n_threads=1):
    """Causal (grouped-query) attention of q against a layer's KV cache.

    q: float32 (n_q, n_head * head_dim); query row i sits at position pos0 + i.
    k_cache, v_cache: float32 (n_kv_head, capacity, head_dim), slots [0, pos0 + n_q)
    filled. Query head h uses KV head h // (n_head // n_kv_head). Row i attends to
    slots [max(0, pos0 + i - window + 1), pos0 + i] (window <= 0: all of them).
    scale defaults to 1 / sqrt(head_dim). out (n_q, n_head * head_dim) float32 is
    written and returned (allocated if None; it must not overlap the inputs).
    n_threads > 1 splits the (row, query heads) tasks over the matmul thread pool when
    the call is large enough to gain from it.
    """
    if n_head <= 0 or n_kv_head <= 0:
        raise ShapeError(f"n_head and n_kv_head must be positive, got {n_head}, {n_kv_head}")
    if n_head % n_kv_head != 0:
        raise ShapeError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
    if pos0 < 0:
        raise ShapeError(f"pos0 must be >= 0, got {pos0}")
    cdef Py_ssize_t head_stride = _cache_head_stride(k_cache, "k_cache")
    if _cache_head_stride(v_cache, "v_cache") != head_stride or v_cache.shape != k_cache.shape:
        raise ShapeError(f"v_cache: expected the layout of k_cache {k_cache.shape} "
                         f"(strides {k_cache.strides}), got {v_cache.shape} "
                         f"(strides {v_cache.strides})")
    cdef Py_ssize_t n_kv = k_cache.shape[0], capacity = k_cache.shape[1]
    cdef int head_dim = k_cache.shape[2]
    if n_kv != n_kv_head:
        raise ShapeError(f"k_cache: has {n_kv} heads, n_kv_head is {n_kv_head}")
    cdef Py_ssize_t width = <Py_ssize_t>n_head * head_dim
    cdef Py_ssize_t ldq = _row_stride(q, "q", width, False)
    cdef Py_ssize_t n_q = q.shape[0]
    if pos0 + n_q > capacity:
        raise ShapeError(f"pos0 + n_q = {pos0} + {n_q} exceeds the cache capacity {capacity}")
    cdef float c_scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if out is None:
        out = np.empty((n_q, width), dtype=np.float32)
    cdef Py_ssize_t ldo = _row_stride(out, "out", width, True)
    if out.shape[0] != n_q:
        raise ShapeError(f"out: expected shape ({n_q}, {width}), got {out.shape}")
    cdef float* q_ptr = <float*> cnp.PyArray_DATA(q)
    cdef float* out_ptr = <float*> cnp.PyArray_DATA(out)
    cdef float* k_ptr = <float*> cnp.PyArray_DATA(k_cache)
    cdef float* v_ptr = <float*> cnp.PyArray_DATA(v_cache)
    cdef Py_ssize_t out_end = (n_q - 1) * ldo + width
    cdef Py_ssize_t cache_end = (n_kv - 1) * head_stride + capacity * head_dim
    if n_q > 0:
        # Address-range test (cheaper than np.may_share_memory, same conservative answer).
        # out may not even be q itself: a head's query is read again for every key
        # block after its first output block was written.
        if _overlaps(out_ptr, out_end, q_ptr, (n_q - 1) * ldq + width):
            raise ShapeError("out overlaps q")
        if _overlaps(out_ptr, out_end, k_ptr, cache_end) \
                or _overlaps(out_ptr, out_end, v_ptr, cache_end):
            raise ShapeError("out overlaps k_cache or v_cache")
    with nogil:
        attention(q_ptr, n_q, ldq, k_ptr, v_ptr, head_stride, pos0, n_head, n_kv_head,
                  head_dim, c_scale, window, out_ptr, ldo, n_threads)
    return out


def _py_rope(x, double pos0, int n_heads, int head_dim, inv_freq, n_rot=None,
             bint neox=False, double pos_step=1.0):
    """Rotate x (n_rows, n_heads * head_dim) float32 in place; returns x.

    Row i sits at position pos0 + i * pos_step. The first n_rot (default head_dim,
    even) dims of each head turn by angle position * inv_freq[j] for pair j:
    pairs (2j, 2j + 1) when neox is False (GGUF "llama"), (j, j + n_rot/2) when True.
    """
    if n_heads <= 0 or head_dim <= 0:
        raise ShapeError(f"n_heads and head_dim must be positive, got {n_heads}, {head_dim}")
    cdef int c_rot = head_dim if n_rot is None else int(n_rot)
    if c_rot < 0 or c_rot > head_dim or c_rot % 2:
        raise ShapeError(f"n_rot must be even and in [0, head_dim={head_dim}], got {c_rot}")
    if not math.isfinite(pos0) or not math.isfinite(pos_step):
        raise ShapeError(f"pos0 and pos_step must be finite, got {pos0}, {pos_step}")
    cdef Py_ssize_t ldx = _row_stride(x, "x", <Py_ssize_t>n_heads * head_dim, True)
    if not isinstance(inv_freq, np.ndarray) or inv_freq.dtype != np.float32 \
            or inv_freq.ndim != 1 or not inv_freq.flags.c_contiguous \
            or inv_freq.shape[0] < c_rot // 2:
        raise ShapeError(f"inv_freq: expected a contiguous float32 vector of at least "
                         f"n_rot/2 = {c_rot // 2} values, got "
                         f"{getattr(inv_freq, 'dtype', type(inv_freq))} "
                         f"{getattr(inv_freq, 'shape', '')}")
    cdef float* x_ptr = <float*> cnp.PyArray_DATA(x)
    cdef const float* f_ptr = <const float*> cnp.PyArray_DATA(inv_freq)
    cdef Py_ssize_t n_rows = x.shape[0]
    with nogil:
        rope(x_ptr, n_rows, ldx, n_heads, head_dim, c_rot, pos0, pos_step, f_ptr, neox)
    return x


def rope_inv_freq(int n_rot, double theta, double scale=1.0):
    """inv_freq[j] = theta^(-2j / n_rot) / scale for the n_rot / 2 rotated pairs.

    ``scale`` is linear position scaling (positions divided by it). Computed in
    float64, returned as float32.
    """
    if n_rot <= 0 or n_rot % 2:
        raise ShapeError(f"n_rot must be a positive even number, got {n_rot}")
    if not (theta > 0.0) or not (scale > 0.0):
        raise ShapeError(f"theta and scale must be positive, got {theta}, {scale}")
    j = np.arange(n_rot // 2, dtype=np.float64)
    return (theta ** (-2.0 * j / n_rot) / scale).astype(np.float32)


# The nogil kernels above are named as in _attention.pxd (that is what other modules
# cimport); the Python functions get the same public names through the module dict.
_py_attention.__name__ = _py_attention.__qualname__ = "attention"
_py_rope.__name__ = _py_rope.__qualname__ = "rope"
globals()["attention"] = _py_attention
globals()["rope"] = _py_rope
