# cython: language_level=3
"""The parts of a forward pass every architecture shares.

A layer is a table of named steps (:class:`Steps`), each a ``nogil`` function of the
layer's weights (:class:`Layer`), the session's buffers (:class:`Workspace`) and the
positions being run (``Call``). :func:`run_layers` runs the table over every layer in one
Python call; given a timing array it also times each step from outside, so the steps
themselves hold no profiling code and the plain path pays one NULL test per layer.

Every intermediate lives in a :class:`Workspace` prepared once per session, so the decode
loop never allocates. Decoding is the n == 1 case of prefill, so the two cannot drift.

A call runs segments: rows of one or several sequences (:func:`run_batch`), each at its own
positions over its own KV cache. Matmuls, norms and activations run on all rows at once (one
pass over the weights for every sequence); rope, kv_store and attention run per segment. A
row comes out bit for bit as it would in a call of its own segment (``matmul_split``), so a
sequence gives the same tokens alone or in a batch.
"""
import numpy as np

cimport numpy as cnp

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.string cimport memcpy

cdef extern from "Python.h":
    ctypedef struct PyTupleObject:
        PyObject** ob_item

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC

from smallmind._core._attention cimport attention as attention_kernel, attention_single_threaded
from smallmind._core._elementwise cimport add, scale
from smallmind._core._matmul cimport (Weight, get_row, matmul_scratch_bytes, packed_min_rows, parallel_chunks,
                                      parallel_ranges)

from smallmind.errors import ShapeError

cnp.import_array()

#: The tensors a Layer can hold, by short GGUF name (matrices, then vectors).
_MATRICES = ("attn_qkv", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
             "ffn_down")
_VECTORS = ("attn_norm.weight", "attn_norm.bias", "ffn_norm.weight", "ffn_norm.bias",
            "attn_qkv.bias", "attn_output.bias", "ffn_up.bias", "ffn_down.bias",
            "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
            "post_ffw_norm.weight")
_KNOWN = frozenset([m + ".weight" for m in _MATRICES] + list(_VECTORS))


cdef inline long long _now() noexcept nogil:
    # CLOCK_MONOTONIC is also what time.perf_counter_ns() reads on Linux, so step times
    # and the profiler's Python-side spans share one time line.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


cdef const float* _vec(object arr, str name, Py_ssize_t n) except? NULL:
    """Pointer to a float32 C-contiguous vector of length n (None -> NULL)."""
    if arr is None:
        return NULL
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 1 \
            or not arr.flags.c_contiguous or arr.shape[0] != n:
        raise ShapeError(f"{name}: expected a contiguous float32 vector of length {n}, "
                         f"got {getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}")
    return <const float*> cnp.PyArray_DATA(arr)


cdef float* _buf(object arr, str name, Py_ssize_t n) except NULL:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 \
            or not arr.flags.c_contiguous or arr.size < n or not arr.flags.writeable:
        raise ShapeError(f"workspace buffer {name}: expected a writable contiguous float32 "
                         f"array of at least {n} elements")
    return <float*> cnp.PyArray_DATA(arr)


cdef Weight _matrix(dict tensors, str name, Py_ssize_t rows, Py_ssize_t cols):
    cdef Weight w = tensors.get(name + ".weight")
    if w is not None and (w.view.rows != rows or w.view.cols != cols):
        raise ShapeError(f"{name}.weight: expected shape ({rows}, {cols}), got {w.shape}")
    return w


cdef class Layer:
    def __init__(self, dict tensors, *, Py_ssize_t n_embd, Py_ssize_t n_hidden, Py_ssize_t q_dim,
                 Py_ssize_t kv_dim, int head_dim, float attn_scale, object inv_freq=None,
                 bint neox=False, Py_ssize_t window=0):
        """``tensors``: the layer's tensors by short GGUF name ("attn_q.weight"): a
        :class:`Weight` per matrix, a float32 vector per norm weight or bias."""
        unknown = sorted(set(tensors) - _KNOWN)
        if unknown:
            raise ShapeError(f"a layer has no place for tensors {unknown}")
        self.wqkv = _matrix(tensors, "attn_qkv", q_dim + 2 * kv_dim, n_embd)
        self.wq = _matrix(tensors, "attn_q", q_dim, n_embd)
        self.wk = _matrix(tensors, "attn_k", kv_dim, n_embd)
        self.wv = _matrix(tensors, "attn_v", kv_dim, n_embd)
        if self.wqkv is None and (self.wq is None or self.wk is None or self.wv is None):
            raise ShapeError("a layer needs attn_qkv or all of attn_q, attn_k, attn_v")
        self.wo = _matrix(tensors, "attn_output", n_embd, q_dim)
        self.w_gate = _matrix(tensors, "ffn_gate", n_hidden, n_embd)
        self.w_up = _matrix(tensors, "ffn_up", n_hidden, n_embd)
        self.w_down = _matrix(tensors, "ffn_down", n_embd, n_hidden)
        if self.wo is None or self.w_up is None or self.w_down is None:
            raise ShapeError("a layer needs attn_output, ffn_up and ffn_down")
        t = tensors
        self.attn_norm_w = _vec(t.get("attn_norm.weight"), "attn_norm.weight", n_embd)
        self.attn_norm_b = _vec(t.get("attn_norm.bias"), "attn_norm.bias", n_embd)
        self.ffn_norm_w = _vec(t.get("ffn_norm.weight"), "ffn_norm.weight", n_embd)
        self.ffn_norm_b = _vec(t.get("ffn_norm.bias"), "ffn_norm.bias", n_embd)
        self.qkv_b = _vec(t.get("attn_qkv.bias"), "attn_qkv.bias", q_dim + 2 * kv_dim)
        self.wo_b = _vec(t.get("attn_output.bias"), "attn_output.bias", n_embd)
        self.up_b = _vec(t.get("ffn_up.bias"), "ffn_up.bias", n_hidden)
        self.down_b = _vec(t.get("ffn_down.bias"), "ffn_down.bias", n_embd)
        self.q_norm_w = _vec(t.get("attn_q_norm.weight"), "attn_q_norm.weight", head_dim)
        self.k_norm_w = _vec(t.get("attn_k_norm.weight"), "attn_k_norm.weight", head_dim)
        self.post_attn_norm_w = _vec(t.get("post_attention_norm.weight"),
                                     "post_attention_norm.weight", n_embd)
        self.post_ffn_norm_w = _vec(t.get("post_ffw_norm.weight"), "post_ffw_norm.weight", n_embd)
        if self.attn_norm_w == NULL or self.ffn_norm_w == NULL:
            raise ShapeError("a layer needs attn_norm.weight and ffn_norm.weight")
        self.n_rot = 0
        self.inv_freq = NULL
        if inv_freq is not None:
            self.n_rot = 2 * len(inv_freq)
            if self.n_rot > head_dim:
                raise ShapeError(f"rotary dims {self.n_rot} exceed head_dim {head_dim}")
            self.inv_freq = _vec(inv_freq, "inv_freq", len(inv_freq))
        self.inv_freq_array = inv_freq
        self.neox = neox
        self.window = window
        self.attn_scale = attn_scale
        self._keep = (dict(tensors), inv_freq)


cdef class Workspace:
    """Built once per session from arrays the caller takes from the buffer pool, so the
    decode loop never allocates. The KV cache arrays are (n_layer, n_kv_head, capacity,
    head_dim) float32. A batch's workspace has none (``arrays["k_cache"] is None``): its
    rows attend over the caches of the sequences' own workspaces, of up to ``capacity``
    slots, in up to ``max_segs`` segments."""

    def __cinit__(self):
        self.segs = NULL
        self.rope_buf = NULL
        self.head_peaks = NULL

    def __dealloc__(self):
        PyMem_Free(self.segs)
        PyMem_Free(self.rope_buf)
        PyMem_Free(self.head_peaks)

    def __init__(self, dict arrays, *, Py_ssize_t max_tokens, Py_ssize_t n_embd,
                 Py_ssize_t n_hidden, int n_head, int n_kv_head, int head_dim,
                 Py_ssize_t vocab, Py_ssize_t capacity, Py_ssize_t n_layer, float norm_eps,
                 Py_ssize_t mm_scratch_bytes, Py_ssize_t max_segs=1):
        self.max_tokens = max_tokens
        self.n_embd = n_embd
        self.n_hidden = n_hidden
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.head_dim = head_dim
        self.q_dim = n_head * head_dim
        self.kv_dim = n_kv_head * head_dim
        self.ldqkv = self.q_dim + 2 * self.kv_dim
        self.vocab = vocab
        self.capacity = capacity
        self.n_layer = n_layer
        self.norm_eps = norm_eps
        self.x = _buf(arrays["x"], "x", max_tokens * n_embd)
        self.xb = _buf(arrays["xb"], "xb", max_tokens * n_embd)
        self.q = _buf(arrays["qkv"], "qkv", max_tokens * self.ldqkv)
        self.k = self.q + self.q_dim
        self.v = self.k + self.kv_dim
        self.att = _buf(arrays["att"], "att", max_tokens * self.q_dim)
        self.h = _buf(arrays["h"], "h", max_tokens * n_hidden)
        self.h2 = _buf(arrays["h2"], "h2", max_tokens * n_hidden)
        self.logits = _buf(arrays["logits"], "logits", vocab)
        cache_n = n_layer * n_kv_head * capacity * head_dim
        if arrays["k_cache"] is None:
            self.k_cache = self.v_cache = NULL
        else:
            self.k_cache = _buf(arrays["k_cache"], "k_cache", cache_n)
            self.v_cache = _buf(arrays["v_cache"], "v_cache", cache_n)
        if max_segs < 1 or max_segs > max_tokens:
            raise ShapeError(f"max_segs must be in [1, max_tokens={max_tokens}], got {max_segs}")
        self.max_segs = max_segs
        # the head's units of each row it finds the peak of: one row per segment (_head.lm_head)
        self.head_peaks = <HeadPeak*> PyMem_Malloc(
            max_segs * ((vocab + HEAD_ROWS - 1) // HEAD_ROWS) * sizeof(HeadPeak))
        if self.head_peaks == NULL:
            raise MemoryError()
        self.segs = <Segment*> PyMem_Malloc(max_segs * sizeof(Segment))
        if self.segs == NULL:
            raise MemoryError()
        # Rotary angle tables: every layer of a decode step turns q and k by the same
        # angles (one set per distinct frequency table), so they are computed once per
        # step, not twice per layer (the cos/sin in double cost more than the rotation).
        # One table per frequency table: Gemma 3's local and global layers alternate, and
        # a single table was rebuilt at every switch (6 times a token, ~25 us).
        cdef Py_ssize_t half = head_dim // 2, per_slot = (2 * max_tokens + 1) * half
        cdef int i
        self.rope_buf = <float*> PyMem_Malloc(ROPE_SLOTS * per_slot * sizeof(float))
        if self.rope_buf == NULL and half > 0:
            raise MemoryError()
        for i in range(ROPE_SLOTS):
            self.rope[i].cs = self.rope_buf + i * per_slot
            self.rope[i].sn = self.rope[i].cs + max_tokens * half
            self.rope[i].freq = self.rope[i].sn + max_tokens * half
            self.rope[i].rows, self.rope[i].n_rot, self.rope[i].call, self.rope[i].used = 0, 0, -1, 0
        self.rope_n_slots = ROPE_SLOTS
        self.rope_uses = 0
        self.n_calls = 0
        mm = arrays["mm_scratch"]
        if mm.nbytes < mm_scratch_bytes:
            raise ShapeError("workspace buffer mm_scratch is too small")
        self.mm_scratch = <char*> cnp.PyArray_DATA(mm)
        self.mm_scratch_size = mm.nbytes
        tok = arrays["tokens"]
        if tok.dtype != np.int32 or tok.size < max_tokens:
            raise ShapeError("workspace buffer tokens: expected int32 of max_tokens")
        self.tokens = <int*> cnp.PyArray_DATA(tok)
        self.arrays = arrays

    @property
    def rope_slots(self) -> int:
        """How many rotary angle tables the layers keep, one per frequency table in use (at
        most ROPE_SLOTS = 2: Gemma 3's local and global tables; more share them, least recently
        used first); 1 recomputes the angles whenever the frequencies change from one layer to
        the next (same values, more work: tests compare the two)."""
        return self.rope_n_slots

    @rope_slots.setter
    def rope_slots(self, int n):
        cdef int i
        if n < 1 or n > ROPE_SLOTS:
            raise ValueError(f"rope_slots must be in [1, {ROPE_SLOTS}], got {n}")
        self.rope_n_slots = n
        for i in range(ROPE_SLOTS):
            self.rope[i].rows, self.rope[i].n_rot, self.rope[i].call = 0, 0, -1

    def set_tokens(self, tokens, Py_ssize_t start, Py_ssize_t n, Py_ssize_t row0=0):
        """Copy tokens[start:start+n] into rows row0... of the token buffer, checking each id once."""
        cdef Py_ssize_t t
        cdef long tok
        if n < 1 or row0 < 0 or row0 + n > self.max_tokens:
            raise ShapeError(f"{n} tokens at row {row0} do not fit the workspace (1..{self.max_tokens})")
        for t in range(n):
            tok = tokens[start + t]
            if tok < 0 or tok >= self.vocab:
                from smallmind.errors import TokenizerError
                raise TokenizerError(f"token id {tok} at index {start + t} is outside the "
                                     f"vocabulary [0, {self.vocab})")
            self.tokens[row0 + t] = <int> tok


def packed_min_rows_count():
    """Rows from which a float matmul takes the packed kernel (see matmul_split)."""
    return packed_min_rows()


def scratch_bytes(Weight w, Py_ssize_t n):
    """Matmul scratch for calls of up to n rows, whichever kernel matmul_split picks."""
    return matmul_scratch_bytes(&w.view, max(n, packed_min_rows()))


cdef class Steps:
    def __cinit__(self):
        self.n = 0
        self.names = ()

    cdef Steps add(self, str name, Step fn):
        if self.n == MAX_STEPS:
            raise ValueError(f"a layer has at most {MAX_STEPS} steps")
        self.fns[self.n] = fn
        self.n += 1
        self.names += (name,)
        return self

    def __len__(self):
        return self.n

    def __repr__(self):
        return "Steps(" + " -> ".join(self.names) + ")"


cdef Steps steps_table(const Step* fns, Py_ssize_t n, str names):
    cdef Steps steps = Steps()
    cdef list words = names.split()
    cdef Py_ssize_t i
    if len(words) != n:
        raise ValueError(f"{n} step functions but {len(words)} step names: {names!r}")
    for i in range(n):
        steps.add(words[i], fns[i])
    return steps


# -- steps every architecture shares ---------------------------------------------------------

cdef void kv_store(Workspace ws, Layer L, const Call* c) noexcept nogil:
    """Copy each segment's rows of K and V into this layer of its cache at positions pos0 ..."""
    cdef Py_ssize_t t, hh, hd = ws.head_dim, head_stride, row
    cdef int i
    cdef float* kc
    cdef float* vc
    cdef const Segment* seg
    for i in range(c.n_segs):
        seg = &c.segs[i]
        head_stride = seg.capacity * hd
        kc = seg.k_cache + c.layer * ws.n_kv_head * head_stride
        vc = seg.v_cache + c.layer * ws.n_kv_head * head_stride
        for t in range(seg.n):
            row = (seg.row0 + t) * ws.ldqkv
            for hh in range(ws.n_kv_head):
                memcpy(kc + hh * head_stride + (seg.pos0 + t) * hd, ws.k + row + hh * hd,
                       hd * sizeof(float))
                memcpy(vc + hh * head_stride + (seg.pos0 + t) * hd, ws.v + row + hh * hd,
                       hd * sizeof(float))


# Row steps (over_rows) of fewer floats than this run on the calling thread alone: handing
# work to the pool costs about a microsecond, a norm or an activation gets through a few
# floats per nanosecond. Prompts are far above it (Gemma 3's activation: 128 rows x 2048), a
# decoded token far below. Tests lower it (_set_rows_split_min) to split tiny models' calls.
cdef Py_ssize_t _rows_split_min = 32768


def _set_rows_split_min(Py_ssize_t floats):
    """Tests: the smallest call (rows x floats per row) whose row steps use the pool; returns
    the previous value."""
    global _rows_split_min
    if floats < 1:
        raise ValueError(f"floats must be >= 1, got {floats}")
    old, _rows_split_min = _rows_split_min, floats
    return old


cdef struct _RowsJob:
    void* ws
    void* layer
    RowStep fn


cdef void _rows_range(const void* arg, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef const _RowsJob* job = <const _RowsJob*>arg
    job.fn(<Workspace>job.ws, <Layer>job.layer, r0, r1)


cdef void over_rows(Workspace ws, Layer L, const Call* c, RowStep fn, Py_ssize_t row_floats) noexcept nogil:
    cdef _RowsJob job
    if c.n_threads < 2 or c.n * row_floats < _rows_split_min:
        fn(ws, L, 0, c.n)
        return
    job.ws, job.layer, job.fn = <void*>ws, <void*>L, fn
    # pieces of at least a quarter of the threshold, so a claim stays cheap beside its work
    parallel_ranges(c.n_threads, c.n, max(1, _rows_split_min // 4 // row_floats), _rows_range, &job)


cdef extern from *:
    """
    static inline Py_ssize_t smm_layer_claim(Py_ssize_t* next) { return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED); }
    """
    Py_ssize_t smm_layer_claim(Py_ssize_t* next) noexcept nogil


cdef inline bint _one_thread(Workspace ws, const Segment* seg) noexcept nogil:
    return attention_single_threaded(seg.n, seg.pos0, ws.n_head, ws.head_dim)


cdef void _attend(Workspace ws, Layer L, const Call* c, const Segment* seg, int n_threads) noexcept nogil:
    cdef Py_ssize_t head_stride = seg.capacity * ws.head_dim
    cdef Py_ssize_t off = c.layer * ws.n_kv_head * head_stride
    attention_kernel(ws.q + seg.row0 * ws.ldqkv, seg.n, ws.ldqkv, seg.k_cache + off,
                     seg.v_cache + off, head_stride, seg.pos0, ws.n_head, ws.n_kv_head,
                     ws.head_dim, L.attn_scale, L.window, ws.att + seg.row0 * ws.q_dim, ws.q_dim,
                     n_threads)


# The one-thread segments of a batched call, shared out over the pool (see attention).
cdef struct _SegmentsJob:
    void* ws
    void* layer
    const Call* c
    Py_ssize_t next        # next segment to claim


cdef void _attend_lane(const void* arg, Py_ssize_t lane) noexcept nogil:
    cdef _SegmentsJob* job = <_SegmentsJob*>arg
    cdef Py_ssize_t i
    while True:
        i = smm_layer_claim(&job.next)
        if i >= job.c.n_segs:
            return
        if _one_thread(<Workspace>job.ws, &job.c.segs[i]):
            _attend(<Workspace>job.ws, <Layer>job.layer, job.c, &job.c.segs[i], 1)


cdef void attention(Workspace ws, Layer L, const Call* c) noexcept nogil:
    """att = softmax(q K^T * scale) V over each segment's cached positions (causal, windowed)."""
    cdef Py_ssize_t n_small = 0
    cdef const Segment* seg
    cdef _SegmentsJob job
    cdef int i, lanes
    for i in range(c.n_segs):
        seg = &c.segs[i]
        if _one_thread(ws, seg) and c.n_segs > 1:
            n_small += 1
            continue
        # A sequence alone always goes here: the kernel splits it from less work than
        # counts as small in a batch (the result is the same whatever the split).
        _attend(ws, L, c, seg, c.n_threads)
    if n_small == 0:
        return
    # Segments too small to gain from threads alone (decode at short contexts) run on one
    # thread each, as they would alone (same result), but side by side: in a batch of 8 such
    # sequences the second core otherwise idles through all their attention.
    lanes = <int>min(<Py_ssize_t>c.n_threads, n_small)
    job.ws, job.layer, job.c, job.next = <void*>ws, <void*>L, c, 0
    if lanes > 1:
        parallel_chunks(lanes, lanes, _attend_lane, &job)
    else:
        _attend_lane(&job, 0)


# The pre-norm residual matmuls of GPT-2 and Llama (a bias only where the layer has one).
cdef void out_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    """x += Wo att (+ b)"""
    matmul_rows(c, &L.wo.view, ws.att, ws.q_dim, ws.x, ws.n_embd, L.wo_b, True, ws.mm_scratch)


cdef void down_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    """x += Wdown h (+ b)"""
    matmul_rows(c, &L.w_down.view, ws.h, ws.n_hidden, ws.x, ws.n_embd, L.down_b, True, ws.mm_scratch)


# -- running the layers ----------------------------------------------------------------------

cdef inline void _run_steps(Steps steps, Workspace ws, Layer L, const Call* c,
                            double* timing) noexcept nogil:
    """Run the steps in order; with ``timing`` (1 + len(steps) doubles) also store the
    start time and each step's duration in ns."""
    cdef int s
    cdef long long t0, t1
    if timing == NULL:
        for s in range(steps.n):
            steps.fns[s](ws, L, c)
        return
    t0 = _now()
    timing[0] = <double> t0
    for s in range(steps.n):
        steps.fns[s](ws, L, c)
        t1 = _now()
        timing[1 + s] = <double> (t1 - t0)
        t0 = t1


def run_layers(Steps steps, list layers, Workspace ws, Py_ssize_t pos0, Py_ssize_t n,
               int n_threads, cnp.ndarray timings=None, Py_ssize_t only=-1):
    """Run every layer's steps on rows 0..n-1 of ``ws.x`` (positions pos0 ... of the
    workspace's own cache).

    ``timings``: None, or a (len(layers), 1 + len(steps)) float64 array that receives
    each layer's start (ns, the clock of ``time.perf_counter_ns``) and step durations.
    ``only``: run just that layer (to find where a value goes wrong), not all of them.
    """
    if ws.k_cache == NULL:
        raise ShapeError("run_layers needs a workspace with a KV cache (a batch's runs run_batch)")
    if n < 1 or n > ws.max_tokens:
        raise ShapeError(f"layers run on {n} positions; the workspace holds 1..{ws.max_tokens}")
    if pos0 < 0 or pos0 + n > ws.capacity:
        raise ShapeError(f"positions {pos0}..{pos0 + n} outside the KV cache of {ws.capacity}")
    ws.segs[0] = Segment(0, n, pos0, ws.capacity, ws.k_cache, ws.v_cache)
    _run(steps, layers, ws, 1, n if n >= packed_min_rows() else 0, n_threads, timings, only)


def run_batch(Steps steps, list layers, Workspace ws, list caches, const Py_ssize_t[:, ::1] spans,
              Py_ssize_t n_packed, int n_threads, cnp.ndarray timings=None):
    """Run every layer's steps on the rows of several sequences at once.

    Segment i is ``spans[i] = (n, pos0)``: the next n rows of ``ws.x`` (segments lie back
    to back from row 0), at positions pos0 ... of ``caches[i]``, the workspace that holds
    that sequence's KV cache. Float matmuls take the packed kernel for rows [0, n_packed)
    and the row kernel for the rest: the caller puts first the segments that would take
    the packed kernel alone, and n_packed must fall on a segment border.
    """
    cdef Py_ssize_t i, n, pos0, row = 0, n_segs = spans.shape[0]
    cdef Workspace seq
    if spans.shape[1] != 2 or n_segs != len(caches):
        raise ShapeError(f"spans: expected ({len(caches)}, 2) (n, pos0) per cache, got "
                         f"({n_segs}, {spans.shape[1]})")
    if n_segs < 1 or n_segs > ws.max_segs:
        raise ShapeError(f"{n_segs} segments; the batch workspace holds 1..{ws.max_segs}")
    for i in range(n_segs):
        seq = caches[i]
        n, pos0 = spans[i, 0], spans[i, 1]
        if seq.k_cache == NULL or seq.n_layer != ws.n_layer or seq.n_kv_head != ws.n_kv_head \
                or seq.head_dim != ws.head_dim:
            raise ShapeError(f"caches[{i}] is not a KV cache of this model")
        if seq.capacity > ws.capacity:
            raise ShapeError(f"caches[{i}] holds {seq.capacity} positions, more than the batch "
                             f"workspace's attention scratch was made for ({ws.capacity})")
        if n < 1 or pos0 < 0 or pos0 + n > seq.capacity:
            raise ShapeError(f"segment {i}: positions {pos0}..{pos0 + n} outside 1.. its KV cache "
                             f"of {seq.capacity}")
        if row < n_packed < row + n:
            raise ShapeError(f"n_packed={n_packed} splits segment {i}")
        if row + n > ws.max_tokens:
            raise ShapeError(f"the segments hold more than the workspace's {ws.max_tokens} rows")
        ws.segs[i] = Segment(row, n, pos0, seq.capacity, seq.k_cache, seq.v_cache)
        row += n
    if n_packed < 0 or n_packed > row:
        raise ShapeError(f"n_packed={n_packed} outside the {row} rows")
    _run(steps, layers, ws, <int>n_segs, n_packed, n_threads, timings, -1)


cdef _run(Steps steps, list layers, Workspace ws, int n_segs, Py_ssize_t n_packed, int n_threads,
          cnp.ndarray timings, Py_ssize_t only):
    """The layers over the segments already in ws.segs[:n_segs]."""
    # A tuple of the layers holds a reference to each for the whole call, so the GIL-free
    # loop below can read them even if another thread edits the list meanwhile.
    cdef tuple held = tuple(layers)
    cdef Py_ssize_t i, n_layer = len(held)
    cdef Py_ssize_t first = only if only >= 0 else 0, end = only + 1 if only >= 0 else n_layer
    cdef double* timing = NULL
    cdef PyObject** items = (<PyTupleObject*>held).ob_item
    cdef Call c
    if n_layer != ws.n_layer:
        raise ShapeError(f"{n_layer} layers for a workspace of {ws.n_layer}")
    for i in range(n_layer):
        if not isinstance(held[i], Layer):
            raise TypeError(f"layers[{i}] is a {type(held[i]).__name__}, not a Layer")
    if timings is not None:
        if timings.dtype != np.float64 or not timings.flags.c_contiguous \
                or timings.size != n_layer * (1 + steps.n):
            raise ShapeError(f"timings: expected a contiguous float64 array of "
                             f"({n_layer}, {1 + steps.n})")
        timing = <double*> cnp.PyArray_DATA(timings)
    if only >= n_layer:
        raise ShapeError(f"layer {only} of a model of {n_layer}")
    c.segs = ws.segs
    c.n_segs = n_segs
    c.n = ws.segs[n_segs - 1].row0 + ws.segs[n_segs - 1].n
    c.n_packed = n_packed
    c.n_threads = n_threads
    ws.n_calls += 1
    # One GIL release for all the layers (per layer it cost ~1-2 us, 30-50 us a token).
    with nogil:
        for i in range(first, end):
            c.layer = <int> i
            _run_steps(steps, ws, <Layer>(<void*>items[i]), &c,
                       timing + i * (1 + steps.n) if timing != NULL else NULL)


# -- before and after the layers -------------------------------------------------------------

def embed(Weight token_embd, Workspace ws, Py_ssize_t n, Py_ssize_t pos0,
          Weight position_embd=None, float embed_scale=1.0, Py_ssize_t row0=0):
    """x[t] = token_embd[tokens[t]] (* embed_scale) (+ position_embd[pos0 + t - row0]) for
    rows t in [row0, row0 + n).

    Token ids were range-checked by the caller when written into ``ws.tokens``.
    """
    cdef Py_ssize_t d = ws.n_embd, t
    cdef float* tmp = ws.xb
    cdef bint learned = position_embd is not None
    if n < 1 or row0 < 0 or row0 + n > ws.max_tokens:
        raise ShapeError(f"embed called for {n} positions at row {row0}; the workspace holds "
                         f"1..{ws.max_tokens}")
    if token_embd.view.cols != d:
        raise ShapeError("token_embd width does not match n_embd")
    if position_embd is not None and (position_embd.view.cols != d
                                      or pos0 < 0 or pos0 + n > position_embd.view.rows):
        raise ShapeError(f"positions {pos0}..{pos0 + n} exceed the learned position table")
    with nogil:
        for t in range(row0, row0 + n):
            get_row(&token_embd.view, ws.tokens[t], ws.x + t * d)
            if embed_scale != 1.0:
                scale(ws.x + t * d, embed_scale, ws.x + t * d, d)
            if learned:
                get_row(&position_embd.view, pos0 + t - row0, tmp)
                add(ws.x + t * d, tmp, ws.x + t * d, d)
