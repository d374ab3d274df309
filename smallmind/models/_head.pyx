# cython: language_level=3
"""The head: the final norm and the output product that turn hidden states into logits.

For one position (decoding) the product runs in pieces of the output matrix, each piece's
largest logit found while its logits are in cache (see ``HEAD_ROWS`` in ``_layer.pxd``):
greedy sampling then reads no logit but a few, where two passes over a large vocabulary's
logits (262k for Gemma 3, 1 MB, cold after the 178 MB matrix) cost ~0.1 ms a token.
"""
cimport numpy as cnp
from libc.math cimport INFINITY, NAN, tanhf

from smallmind._core._matmul cimport (Weight, WeightView, matmul_scratch_bytes, matmul_split,
                                      packed_min_rows, parallel_ranges, weight_rows)
from smallmind._core._select cimport first_index_of, max_scan
from smallmind.models._layer cimport (HEAD_ROWS, HeadPeak, Workspace, _buf, _vec, layernorm_rows,
                                      rmsnorm_rows)

from smallmind.errors import ShapeError

cnp.import_array()


def lm_head(Weight output, Workspace ws, Py_ssize_t row0, Py_ssize_t n_rows, int n_threads,
            object norm_w, object norm_b=None, bint rms=False, float softcap=0.0,
            cnp.ndarray out=None, const Py_ssize_t[::1] rows=None) -> int:
    """Final norm of x[row0 : row0 + n_rows] into xb, then logits = xb @ output.T.

    Logits land in ``out`` ((n_rows, vocab) float32) or, for one row, in ws.logits. With
    ``rows``, row i is x[rows[i]] instead (the last row of each sequence of a batch), and
    every row is computed as a one-row call computes it.

    Returns, for one row, the first index of its largest logit, found as the product runs
    (see _head_peak); -1 when not known (several rows, a weight layout the product cannot be
    cut in, a NaN among the logits, or all -inf).
    """
    cdef Py_ssize_t d = ws.n_embd, t, src, peak = -1
    cdef const float* w = _vec(norm_w, "output_norm.weight", d)
    cdef const float* b = _vec(norm_b, "output_norm.bias", d)
    cdef float* dst = ws.logits
    cdef Py_ssize_t n_packed = n_rows if n_rows >= packed_min_rows() else 0
    cdef bint listed = rows is not None
    cdef WeightView whole
    cdef bint by_units = n_rows == 1 and weight_rows(&output.view, 0, output.view.rows, &whole) \
        and matmul_scratch_bytes(&output.view, 1) + 64 <= _HEAD_SCRATCH
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
    if out is not None:
        dst = _buf(out, "out", n_rows * ws.vocab)
    elif n_rows != 1:
        raise ShapeError("several rows of logits need an `out` array")
    with nogil:
        for t in range(n_rows):
            src = rows[t] if listed else row0 + t
            if rms:
                rmsnorm_rows(ws.x + src * d, w, ws.xb + t * d, 1, d, ws.norm_eps)
            else:
                layernorm_rows(ws.x + src * d, w, b, ws.xb + t * d, 1, d, ws.norm_eps)
        if by_units:
            peak = _head_peak(&output.view, ws, dst, n_threads, softcap)
        else:
            matmul_split(&output.view, ws.xb, n_rows, n_packed, d, dst, ws.vocab, NULL, False, n_threads,
                         ws.mm_scratch)
            if softcap > 0.0:
                _softcap(dst, n_rows * ws.vocab, softcap)
    return peak


# The head's product in units of HEAD_ROWS rows (a pool job of them), and each unit's peak.
cdef struct _HeadJob:
    const WeightView* w
    const float* x
    float* y
    float softcap
    HeadPeak* peaks


cdef enum:
    _HEAD_SCRATCH = 16384  # bytes of quantised activations on a lane's stack (n_embd <= ~14k)
    _HEAD_PIECE = 64       # units per product call: fewer calls while the claims are large


cdef void _head_range(const void* arg, Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    cdef const _HeadJob* job = <const _HeadJob*>arg
    cdef char scratch[_HEAD_SCRATCH]
    cdef WeightView part
    cdef Py_ssize_t p1, r0, r1, rows = job.w.rows
    cdef bint nan
    cdef float m
    while u0 < u1:
        p1 = min(u0 + _HEAD_PIECE, u1)
        r0, r1 = u0 * HEAD_ROWS, min(p1 * HEAD_ROWS, rows)
        weight_rows(job.w, r0, r1, &part)  # the caller checked the layout (r0 % 16 == 0)
        # n = 1, n_packed = 0: the kernel lm_head's one-row product takes, each row as in it
        matmul_split(&part, job.x, 1, 0, job.w.cols, job.y + r0, rows, NULL, False, 1, scratch)
        if job.softcap > 0.0:
            _softcap(job.y + r0, r1 - r0, job.softcap)
        nan = False
        m = max_scan(job.y + r0, r1 - r0, &nan)
        job.peaks[u0].value = NAN if nan else m
        job.peaks[u0].index = -1 if nan or m == -INFINITY else r0 + first_index_of(job.y + r0, r1 - r0, m)
        job.peaks[u0].next = p1
        u0 = p1


cdef Py_ssize_t _head_peak(const WeightView* w, Workspace ws, float* y, int n_threads,
                           float softcap) noexcept nogil:
    """y = W xb[0] (soft-capped) piece by piece; returns the first index of the largest y, or -1
    when y holds a NaN or only -inf (the sampler then looks at every logit, and says why)."""
    cdef _HeadJob job
    cdef Py_ssize_t u, n_units = (w.rows + HEAD_ROWS - 1) // HEAD_ROWS, best = -1
    cdef float top = -INFINITY
    job.w, job.x, job.y, job.softcap, job.peaks = w, ws.xb, y, softcap, ws.head_peaks
    parallel_ranges(n_threads, n_units, 1, _head_range, &job)
    u = 0
    while u < n_units:  # the pieces in order
        if ws.head_peaks[u].index < 0 and ws.head_peaks[u].value != ws.head_peaks[u].value:
            return -1  # a NaN
        if ws.head_peaks[u].index >= 0 and ws.head_peaks[u].value > top:
            top, best = ws.head_peaks[u].value, ws.head_peaks[u].index  # strictly: the first
        u = ws.head_peaks[u].next
    return best


cdef void _softcap(float* x, Py_ssize_t n, float cap) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = cap * tanhf(x[i] / cap)
