# cython: language_level=3
"""The head: the final norm and the output product that turn hidden states into logits.

For the rows whose next token is sampled (one position when decoding, the last row of each
sequence of a batch) the product runs in pieces of the output matrix, each piece's largest
logit found, row by row, while the piece's logits are in cache (see ``HEAD_ROWS`` in
``_layer.pxd``): greedy sampling then reads no logit but a few, where two passes over a large
vocabulary's logits (262k for Gemma 3, 1 MB a row, cold after the 178 MB matrix) cost ~0.1 ms
a token.
"""
cimport numpy as cnp
from libc.math cimport INFINITY, NAN, tanhf

from smallmind._core._matmul cimport (Weight, WeightView, cut_min_rows, matmul_scratch_bytes,
                                      matmul_split, packed_min_rows, parallel_ranges, weight_rows)
from smallmind._core._select cimport first_index_of, max_scan
from smallmind.models._layer cimport (HEAD_ROWS, HeadPeak, Workspace, _buf, _vec, layernorm_rows,
                                      rmsnorm_rows)

from smallmind.errors import ShapeError

cnp.import_array()


cdef extern from *:
    """
    /* The slots of the head's scratch (bit i of *busy: slot i taken). A lane takes a free
     * one for the range it runs; lm_head runs on at most as many lanes as there are slots,
     * so one is always free. */
    static inline int smh_take_slot(unsigned long long* busy)
    {
        unsigned long long m = __atomic_load_n(busy, __ATOMIC_RELAXED);
        for (;;) {
            int i = __builtin_ctzll(~m);
            if (__atomic_compare_exchange_n(busy, &m, m | (1ULL << i), 0, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED))
                return i;
        }
    }
    static inline void smh_give_slot(unsigned long long* busy, int i)
    {
        __atomic_fetch_and(busy, ~(1ULL << i), __ATOMIC_RELEASE);
    }
    """
    int smh_take_slot(unsigned long long* busy) noexcept nogil
    void smh_give_slot(unsigned long long* busy, int i) noexcept nogil


cdef enum:
    _HEAD_SCRATCH = 16384  # bytes of quantised activations on a lane's stack (1 row: n_embd <= ~14k)
    _HEAD_PIECE = 64       # units per product call: fewer calls while the claims are large
    _MAX_SLOTS = 64        # lanes with a scratch slot of their own (bits of _HeadJob.busy)


def lm_head(Weight output, Workspace ws, Py_ssize_t row0, Py_ssize_t n_rows, int n_threads,
            object norm_w, object norm_b=None, bint rms=False, float softcap=0.0,
            cnp.ndarray out=None, const Py_ssize_t[::1] rows=None, Py_ssize_t[::1] peaks=None) -> int:
    """Final norm of x[row0 : row0 + n_rows] into xb, then logits = xb @ output.T.

    Logits land in ``out`` ((n_rows, vocab) float32) or, for one row, in ws.logits. With
    ``rows``, row i is x[rows[i]] instead (the last row of each sequence of a batch), and
    every row is computed as a one-row call computes it.

    Returns, for one row, the first index of its largest logit, found as the product runs
    (see _head_peaks); with ``peaks`` (intp, n_rows), each row's is written there. -1 when not
    known: several rows without ``peaks``, or rows the product runs through the packed float
    kernel (n_rows >= packed_min_rows() without ``rows``), more rows than the workspace's
    max_segs, a weight layout the product cannot be cut in, a NaN among the row's logits, or
    all -inf.
    """
    cdef Py_ssize_t d = ws.n_embd, t, src, peak = -1
    cdef const float* w = _vec(norm_w, "output_norm.weight", d)
    cdef const float* b = _vec(norm_b, "output_norm.bias", d)
    cdef float* dst = ws.logits
    cdef Py_ssize_t n_packed = n_rows if n_rows >= packed_min_rows() else 0
    cdef bint listed = rows is not None
    cdef Py_ssize_t* found = &peak
    cdef WeightView whole
    cdef Py_ssize_t stride = 0, n_slots = 0
    cdef int nt = n_threads
    if listed:
        if rows.shape[0] != n_rows or n_rows > ws.max_tokens:
            raise ShapeError(f"rows: expected {n_rows} row indices (at most {ws.max_tokens})")
        for t in range(n_rows):
            if rows[t] < 0 or rows[t] >= ws.max_tokens:
                raise ShapeError(f"rows[{t}] = {rows[t]} outside the workspace")
        n_packed = 0
    if n_rows < 1 or row0 < 0 or row0 + n_rows > ws.max_tokens:
        raise ShapeError(f"rows {row0}..{row0 + n_rows} outside the workspace")
    if output.view.cols != d or output.view.rows != ws.vocab:
        raise ShapeError("output matrix does not match (vocab, n_embd)")
    if peaks is not None:
        if peaks.shape[0] < n_rows:
            raise ShapeError(f"peaks: {peaks.shape[0]} entries for {n_rows} rows")
        found = &peaks[0]
    if out is not None:
        dst = _buf(out, "out", n_rows * ws.vocab)
    elif n_rows != 1:
        raise ShapeError("several rows of logits need an `out` array")
    cdef bint by_units = (n_rows == 1 or peaks is not None) and n_packed == 0 \
        and n_rows <= ws.max_segs and weight_rows(&output.view, 0, output.view.rows, &whole)
    if by_units and not _fits_stack(&output.view, n_rows):
        stride = _slot_bytes(&output.view, n_rows)  # more than a stack holds: slots of mm_scratch
        n_slots = min(ws.mm_scratch_size // stride, <Py_ssize_t>_MAX_SLOTS)
        by_units = n_slots > 0
        nt = <int>min(<Py_ssize_t>nt, n_slots)
    with nogil:
        for t in range(n_rows):
            src = rows[t] if listed else row0 + t
            if rms:
                rmsnorm_rows(ws.x + src * d, w, ws.xb + t * d, 1, d, ws.norm_eps)
            else:
                layernorm_rows(ws.x + src * d, w, b, ws.xb + t * d, 1, d, ws.norm_eps)
        if by_units:
            _head_peaks(&output.view, ws, dst, n_rows, nt, softcap, ws.mm_scratch if stride else NULL,
                        stride, n_slots, found)
        else:
            matmul_split(&output.view, ws.xb, n_rows, n_packed, d, dst, ws.vocab, NULL, False, n_threads,
                         ws.mm_scratch)
            if softcap > 0.0:
                _softcap(dst, n_rows * ws.vocab, softcap)
            for t in range(n_rows if peaks is not None else 0):
                found[t] = -1
    return found[0] if n_rows == 1 else -1


def scratch_bytes(Weight output, Py_ssize_t n_rows, int n_threads) -> int:
    """Bytes of a workspace's mm_scratch that lm_head's product by units of n_rows rows uses on
    n_threads lanes (0 when a lane's stack holds their activations)."""
    if n_rows < 1 or _fits_stack(&output.view, n_rows):
        return 0
    return _slot_bytes(&output.view, n_rows) * min(max(n_threads, 1), <int>_MAX_SLOTS)


cdef inline bint _fits_stack(const WeightView* w, Py_ssize_t n_rows) noexcept nogil:
    """Whether the activations of n_rows rows, quantised for w, fit a lane's stack buffer."""
    return matmul_scratch_bytes(w, n_rows) + 64 <= _HEAD_SCRATCH


cdef Py_ssize_t _slot_bytes(const WeightView* w, Py_ssize_t n_rows) noexcept nogil:
    return (matmul_scratch_bytes(w, n_rows) + 63) // 64 * 64


# The head's product in units of HEAD_ROWS rows, claimed by the threads in whole parts of
# `per_part` units (a pool job of parts; the last part takes the rows left), and each product
# call's peak. A part holds at least cut_min_rows rows, so every product call takes the kernel
# of the whole matrix's product (a large float matrix's: one streamed row at a time).
cdef struct _HeadJob:
    const WeightView* w
    const float* x           # n rows of w.cols
    Py_ssize_t n
    float* y                 # n rows of w.rows logits
    float softcap
    HeadPeak* peaks          # n rows of n_units
    Py_ssize_t n_units, per_part, n_parts
    char* scratch            # slots of `stride` bytes, or NULL: each lane's stack
    Py_ssize_t stride
    unsigned long long busy  # the slots taken


cdef void _head_range(const void* arg, Py_ssize_t a0, Py_ssize_t a1) noexcept nogil:
    """Parts [a0, a1) of the job, in product calls of up to _HEAD_PIECE units (whole parts)."""
    cdef _HeadJob* job = <_HeadJob*>arg  # written to: `busy` alone, atomically
    cdef char stack[_HEAD_SCRATCH]
    cdef char* scratch = stack
    cdef int slot = -1
    cdef WeightView part
    cdef Py_ssize_t p1, r0, r1, t, rows = job.w.rows
    cdef Py_ssize_t u0 = a0 * job.per_part, u1 = job.n_units if a1 == job.n_parts else a1 * job.per_part
    cdef Py_ssize_t piece = (_HEAD_PIECE + job.per_part - 1) // job.per_part * job.per_part
    cdef HeadPeak* peak
    cdef float* y
    cdef bint nan
    cdef float m
    if job.scratch != NULL:
        slot = smh_take_slot(&job.busy)
        scratch = job.scratch + slot * job.stride
    while u0 < u1:
        p1 = min(u0 + piece, u1)  # whole parts: the last call of a range holds one at least
        r0, r1 = u0 * HEAD_ROWS, min(p1 * HEAD_ROWS, rows)
        weight_rows(job.w, r0, r1, &part)  # the caller checked the layout; r0 % 16 == 0, cut_min_rows
        # n_packed = 0: the kernel of lm_head's one-row product, each row as in it
        matmul_split(&part, job.x, job.n, 0, job.w.cols, job.y + r0, rows, NULL, False, 1, scratch)
        for t in range(job.n):  # each row's piece while it is in cache
            y = job.y + t * rows + r0
            if job.softcap > 0.0:
                _softcap(y, r1 - r0, job.softcap)
            nan = False
            m = max_scan(y, r1 - r0, &nan)
            peak = job.peaks + t * job.n_units + u0
            peak.value = NAN if nan else m
            peak.index = -1 if nan or m == -INFINITY else r0 + first_index_of(y, r1 - r0, m)
            peak.next = p1
        u0 = p1
    if slot >= 0:
        smh_give_slot(&job.busy, slot)


cdef void _head_peaks(const WeightView* w, Workspace ws, float* y, Py_ssize_t n, int n_threads,
                      float softcap, char* scratch, Py_ssize_t stride, Py_ssize_t n_slots,
                      Py_ssize_t* found) noexcept nogil:
    """y[t] = W xb[t] (soft-capped) piece by piece for t < n (ws.head_peaks holds n rows of
    units); found[t] = the first index of the largest y[t], or -1 when y[t] holds a NaN or only
    -inf (the sampler then looks at every logit, and says why). With `scratch`, each lane works
    in one of its n_slots slots of `stride` bytes (n_threads <= n_slots)."""
    cdef _HeadJob job
    cdef Py_ssize_t t, u, best, n_units = (w.rows + HEAD_ROWS - 1) // HEAD_ROWS
    cdef Py_ssize_t min_rows = cut_min_rows(w)
    cdef HeadPeak* peaks
    cdef float top
    job.w, job.x, job.n, job.y, job.softcap = w, ws.xb, n, y, softcap
    job.peaks, job.n_units, job.scratch, job.stride = ws.head_peaks, n_units, scratch, stride
    job.per_part = (min_rows + HEAD_ROWS - 1) // HEAD_ROWS
    # the last part, [(n_parts - 1) per_part units, w.rows), holds min_rows rows at least
    job.n_parts = max(1, (w.rows - min_rows) // (job.per_part * HEAD_ROWS) + 1)
    job.busy = 0 if n_slots >= _MAX_SLOTS else (~(<unsigned long long>0)) << n_slots  # slots < n_slots free
    parallel_ranges(n_threads, job.n_parts, 1, _head_range, &job)
    for t in range(n):
        peaks, top, best = ws.head_peaks + t * n_units, -INFINITY, -1
        u = 0
        while u < n_units:  # the pieces in order
            if peaks[u].index < 0 and peaks[u].value != peaks[u].value:
                best = -1  # a NaN
                break
            if peaks[u].index >= 0 and peaks[u].value > top:
                top, best = peaks[u].value, peaks[u].index  # strictly: the first
            u = peaks[u].next
        found[t] = best


cdef void _softcap(float* x, Py_ssize_t n, float cap) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = cap * tanhf(x[i] / cap)
