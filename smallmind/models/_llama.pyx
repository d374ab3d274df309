# cython: language_level=3
"""The Llama layer, step by step (RMSNorm, rotary positions, grouped-query attention,
SwiGLU MLP; no biases):

    xb = rmsnorm(x)                         attn_norm
    q, k, v = Wq xb, Wk xb, Wv xb           qkv_matmul   (k, v: n_kv_head heads)
    q, k = rope(q, pos), rope(k, pos)       rope
    cache[pos] = k, v                       kv_store
    att = attention(q, cache)               attention
    x += Wo att                             out_matmul
    xb = rmsnorm(x)                         ffn_norm
    h, h2 = Wgate xb, Wup xb                ffn_matmul
    h = silu(h) * h2                        activation
    x += Wdown h                            down_matmul

Each step runs on all n rows at once (n = 1 when decoding one sequence; rope, kv_store and
attention per sequence when a batch runs several); the norms and the activation share a call's
rows out over the thread pool when there are many (``over_rows``). ``LAYER`` is the table that
``_layer.run_layers`` runs for every layer.
"""
from smallmind._core._elementwise cimport swiglu
from smallmind._core._matmul cimport WeightView
from smallmind.models._layer cimport (Step, attention, down_matmul, kv_store, matmul_rows,
                                      matmul_rows_many, out_matmul, over_rows, rmsnorm_rows, steps_table)
from smallmind.models._rope_step cimport rope_segments


cdef void _attn_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_embd
    rmsnorm_rows(ws.x + r0 * d, L.attn_norm_w, ws.xb + r0 * d, r1 - r0, d, ws.norm_eps)


cdef void attn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _attn_norm, 2 * ws.n_embd)


cdef void qkv_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    # one call for the three products of xb: quantised once, one thread-pool job
    cdef const WeightView* w[3]
    cdef float* y[3]
    cdef Py_ssize_t ld[3]
    w[0], w[1], w[2] = &L.wq.view, &L.wk.view, &L.wv.view
    y[0], y[1], y[2] = ws.q, ws.k, ws.v
    ld[0] = ld[1] = ld[2] = ws.ldqkv
    matmul_rows_many(c, 3, w, ws.xb, ws.n_embd, y, ld, ws.mm_scratch)


cdef void rope_qk(Workspace ws, Layer L, const Call* c) noexcept nogil:
    rope_segments(ws, L, c)  # each sequence's rows at its own positions


cdef void _ffn_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_embd
    rmsnorm_rows(ws.x + r0 * d, L.ffn_norm_w, ws.xb + r0 * d, r1 - r0, d, ws.norm_eps)


cdef void ffn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _ffn_norm, 2 * ws.n_embd)


cdef void ffn_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    cdef const WeightView* w[2]
    cdef float* y[2]
    cdef Py_ssize_t ld[2]
    w[0], w[1] = &L.w_gate.view, &L.w_up.view
    y[0], y[1] = ws.h, ws.h2
    ld[0] = ld[1] = ws.n_hidden
    matmul_rows_many(c, 2, w, ws.xb, ws.n_embd, y, ld, ws.mm_scratch)


cdef void _activation(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_hidden
    swiglu(ws.h + r0 * d, ws.h2 + r0 * d, ws.h + r0 * d, (r1 - r0) * d)


cdef void activation(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _activation, 3 * ws.n_hidden)


cdef Step[10] _STEPS = [attn_norm, qkv_matmul, rope_qk, kv_store, attention, out_matmul, ffn_norm,
                        ffn_matmul, activation, down_matmul]
LAYER = steps_table(_STEPS, sizeof(_STEPS) // sizeof(Step), "attn_norm qkv_matmul rope kv_store attention "
                    "out_matmul ffn_norm ffn_matmul activation down_matmul")
