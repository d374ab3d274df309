# cython: language_level=3
"""What every architecture's layer is made of: its weights (Layer), the buffers it works
in (Workspace), and the step runner. The layers themselves are in ``_gpt2.pyx``,
``_llama.pyx`` and ``_gemma3.pyx``: each is a list of named steps, run in order."""
from smallmind._core._matmul cimport Weight, WeightView, matmul_many, matmul_split, packed_min_rows
from smallmind._core._norm cimport layernorm, rmsnorm


# One layer's weights, validated once. Missing pieces are None / NULL.
cdef class Layer:
    cdef readonly Weight wqkv, wq, wk, wv, wo, w_gate, w_up, w_down
    cdef const float* attn_norm_w
    cdef const float* attn_norm_b
    cdef const float* ffn_norm_w
    cdef const float* ffn_norm_b
    cdef const float* qkv_b
    cdef const float* wo_b
    cdef const float* up_b
    cdef const float* down_b
    cdef const float* q_norm_w
    cdef const float* k_norm_w
    cdef const float* post_attn_norm_w
    cdef const float* post_ffn_norm_w
    cdef const float* inv_freq
    cdef int n_rot
    cdef bint neox
    cdef Py_ssize_t window
    cdef float attn_scale
    cdef readonly object inv_freq_array
    cdef object _keep


cdef enum:
    ROPE_SLOTS = 2


# cos, sin of the rotary angles of one frequency table ((max_tokens, head_dim/2) each), for
# the positions of one segment from row 0 (rows > 0), or for every segment of call `call`
# at its own rows (rows == 0, call >= 0).
cdef struct RopeTable:
    float* cs
    float* sn
    float* freq            # (head_dim/2,) a copy of the frequencies they were computed for
    double pos0
    Py_ssize_t rows
    int n_rot
    long long call
    long long used         # Workspace.rope_uses at the last lookup that found it


# The head's product for one position (or the last row of each sequence of a batch) runs in
# units of HEAD_ROWS rows of logits (vocabulary entries), claimed by the threads in ranges and
# computed in pieces of up to 64 units; each row's largest logit of a piece and its first index
# are found right after the piece's product, while its logits are in cache (_head.lm_head), so
# greedy sampling needs no pass over the logits.
cdef enum:
    HEAD_ROWS = 64

cdef struct HeadPeak:      # of the piece that starts at this unit
    float value            # the largest logit of the piece; NaN when it holds a NaN
    Py_ssize_t index       # the first index holding it; -1 when NaN or all -inf
    Py_ssize_t next        # the unit after the piece


# Every buffer a forward pass touches, for up to ``max_tokens`` positions at once.
cdef class Workspace:
    cdef float* x          # (max_tokens, n_embd) residual stream
    cdef float* xb         # (max_tokens, n_embd) normalised input / branch output
    cdef float* q          # (max_tokens, ldqkv) rows of [q | k | v]; k = q + q_dim,
    cdef float* k          #   v = k + kv_dim
    cdef float* v
    cdef float* att        # (max_tokens, q_dim)
    cdef float* h          # (max_tokens, n_hidden)
    cdef float* h2         # (max_tokens, n_hidden)
    cdef float* logits     # (vocab,) one row of logits
    cdef HeadPeak* head_peaks  # (max_segs, ceil(vocab / HEAD_ROWS)) see HEAD_ROWS; entries at piece starts
    cdef char* mm_scratch
    cdef Py_ssize_t mm_scratch_size  # bytes
    cdef float* k_cache    # (n_layer, n_kv_head, capacity, head_dim); NULL in a batch's
    cdef float* v_cache    #   workspace, whose rows attend over each sequence's own cache
    cdef int* tokens       # (max_tokens,)
    cdef Segment* segs     # (max_segs,) the segments of the running call
    cdef RopeTable rope[ROPE_SLOTS]  # rotary angle tables, one per frequency table in use,
    cdef float* rope_buf             #   in this one allocation
    cdef int rope_n_slots       # how many of them to use (1: one table, rebuilt whenever the
    cdef long long rope_uses    #   frequencies change); rope_uses counts lookups (LRU order)
    cdef RopeTable* rope_now    # the table rope_segments turns the running call's rows by
    cdef long long n_calls     # calls run (run_layers, run_batch) so far
    cdef readonly Py_ssize_t max_tokens, n_embd, n_hidden, q_dim, kv_dim, ldqkv, vocab
    cdef readonly Py_ssize_t capacity, n_layer, max_segs
    cdef readonly int n_head, n_kv_head, head_dim
    cdef readonly object arrays
    cdef float norm_eps


# One sequence's rows in a call: rows [row0, row0 + n) of the workspace sit at positions
# pos0 ... of that sequence, whose KV cache is k_cache / v_cache of `capacity` slots.
cdef struct Segment:
    Py_ssize_t row0
    Py_ssize_t n
    Py_ssize_t pos0
    Py_ssize_t capacity
    float* k_cache
    float* v_cache


# Which layer runs, on which rows: what a step needs besides weights and buffers. Matmuls,
# norms and activations run on all n rows at once; rope, kv_store and attention per segment.
cdef struct Call:
    int layer
    int n_threads
    Py_ssize_t n         # rows of all segments
    Py_ssize_t n_packed  # leading rows whose float matmuls take the packed kernel (matmul_split)
    const Segment* segs
    int n_segs


ctypedef void (*Step)(Workspace ws, Layer L, const Call* c) noexcept nogil

cdef enum:
    MAX_STEPS = 16


# A layer as an ordered table of named steps; ``run_layers`` runs it (and times it).
cdef class Steps:
    cdef Step fns[MAX_STEPS]
    cdef int n
    cdef readonly tuple names
    cdef Steps add(self, str name, Step fn)


# Steps from their functions and their space-separated names, both in running order.
cdef Steps steps_table(const Step* fns, Py_ssize_t n, str names)


# Validated pointers into float32 arrays: a vector of n (None -> NULL), a writable buffer of
# at least n elements.
cdef const float* _vec(object arr, str name, Py_ssize_t n) except? NULL
cdef float* _buf(object arr, str name, Py_ssize_t n) except NULL


# A step's work on rows [r0, r1) of the call, for steps whose rows are independent (norms,
# activations): see over_rows.
ctypedef void (*RowStep)(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil

# fn over the call's n rows: a call of many rows (a prompt, a large batch) shares them out over
# the thread pool in ranges; a small one (decoding) runs them here in one piece. row_floats: the
# floats a row of the step reads and writes (what sizes a worthwhile piece). The result is the
# same either way: each row is computed alone.
cdef void over_rows(Workspace ws, Layer L, const Call* c, RowStep fn, Py_ssize_t row_floats) noexcept nogil


# Steps every architecture shares.
cdef void kv_store(Workspace ws, Layer L, const Call* c) noexcept nogil
cdef void attention(Workspace ws, Layer L, const Call* c) noexcept nogil
# (rope_segments: _rope_step.pxd)
# x += Wo att and x += Wdown h, with the layer's biases if any (GPT-2 and Llama).
cdef void out_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil
cdef void down_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil


# y (+)= W x (+ b) for the call's n rows (see matmul_split).
cdef inline void matmul_rows(const Call* c, const WeightView* w, const float* x, Py_ssize_t ldx,
                             float* y, Py_ssize_t ldy, const float* bias, bint accumulate,
                             void* scratch) noexcept nogil:
    matmul_split(w, x, c.n, c.n_packed, ldx, y, ldy, bias, accumulate, c.n_threads, scratch)


# y_i (=) W_i x for i < count, the call's n rows (no bias, no accumulate): one fused call
# (x quantised once, one thread-pool job; see matmul_many) when the kernel a lone matmul of n
# rows picks is right for every row, else a matmul_split per weight (float weights in a batch
# mixing packed and row-kernel segments).
cdef inline void matmul_rows_many(const Call* c, int count, const WeightView** w, const float* x,
                                  Py_ssize_t ldx, float** y, const Py_ssize_t* ldy,
                                  void* scratch) noexcept nogil:
    cdef int i
    cdef Py_ssize_t gemm = packed_min_rows()
    if (c.n_packed == 0 and c.n < gemm) or (c.n_packed == c.n and c.n >= gemm):
        matmul_many(count, w, x, c.n, ldx, y, ldy, c.n_threads, scratch)
        return
    for i in range(count):
        matmul_split(w[i], x, c.n, c.n_packed, ldx, y[i], ldy[i], NULL, False, c.n_threads, scratch)


cdef inline void rmsnorm_rows(const float* x, const float* w, float* out, Py_ssize_t n,
                              Py_ssize_t d, float eps) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(n):
        rmsnorm(x + t * d, w, out + t * d, d, eps)


cdef inline void layernorm_rows(const float* x, const float* w, const float* b, float* out,
                                Py_ssize_t n, Py_ssize_t d, float eps) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(n):
        layernorm(x + t * d, w, b, out + t * d, d, eps)
