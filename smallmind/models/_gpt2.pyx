# cython: language_level=3
"""The GPT-2 layer, step by step (pre-LayerNorm, fused QKV, GELU MLP, biases everywhere):

    xb = layernorm(x)                       attn_norm
    q | k | v = Wqkv xb + b                 qkv_matmul
    cache[pos] = k, v                       kv_store
    att = attention(q, cache)               attention
    x += Wo att + b                         out_matmul
    xb = layernorm(x)                       ffn_norm
    h = Wup xb + b                          ffn_matmul
    h = gelu(h)                             activation
    x += Wdown h + b                        down_matmul

Each step runs on all n rows at once (n = 1 when decoding one sequence; kv_store and
attention per sequence when a batch runs several); the norms and the activation share a call's
rows out over the thread pool when there are many (``over_rows``). ``LAYER`` is the table that
``_layer.run_layers`` runs for every layer.
"""
from smallmind._core._gelu cimport gelu_tanh
from smallmind.models._layer cimport (Call, Layer, Step, Workspace, attention, down_matmul,
                                      kv_store, layernorm_rows, matmul_rows, out_matmul, over_rows,
                                      steps_table)


cdef void _attn_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_embd
    layernorm_rows(ws.x + r0 * d, L.attn_norm_w, L.attn_norm_b, ws.xb + r0 * d, r1 - r0, d, ws.norm_eps)


cdef void attn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _attn_norm, 2 * ws.n_embd)


cdef void qkv_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    matmul_rows(c, &L.wqkv.view, ws.xb, ws.n_embd, ws.q, ws.ldqkv, L.qkv_b, False, ws.mm_scratch)


cdef void _ffn_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_embd
    layernorm_rows(ws.x + r0 * d, L.ffn_norm_w, L.ffn_norm_b, ws.xb + r0 * d, r1 - r0, d, ws.norm_eps)


cdef void ffn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _ffn_norm, 2 * ws.n_embd)


cdef void ffn_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    matmul_rows(c, &L.w_up.view, ws.xb, ws.n_embd, ws.h, ws.n_hidden, L.up_b, False, ws.mm_scratch)


cdef void _activation(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_hidden
    gelu_tanh(ws.h + r0 * d, ws.h + r0 * d, (r1 - r0) * d)


cdef void activation(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _activation, 2 * ws.n_hidden)


cdef Step[9] _STEPS = [attn_norm, qkv_matmul, kv_store, attention, out_matmul, ffn_norm, ffn_matmul,
                       activation, down_matmul]
LAYER = steps_table(_STEPS, sizeof(_STEPS) // sizeof(Step), "attn_norm qkv_matmul kv_store attention "
                    "out_matmul ffn_norm ffn_matmul activation down_matmul")
