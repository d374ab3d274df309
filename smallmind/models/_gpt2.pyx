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
attention per sequence when a batch runs several); ``LAYER`` is the table that
``_layer.run_layers`` runs for every layer.
"""
from smallmind._core._gelu cimport gelu_tanh
from smallmind.models._layer cimport (Call, Layer, Step, Workspace, attention, down_matmul,
                                      kv_store, layernorm_rows, matmul_rows, out_matmul, steps_table)


cdef void attn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    layernorm_rows(ws.x, L.attn_norm_w, L.attn_norm_b, ws.xb, c.n, ws.n_embd, ws.norm_eps)


cdef void qkv_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    matmul_rows(c, &L.wqkv.view, ws.xb, ws.n_embd, ws.q, ws.ldqkv, L.qkv_b, False, ws.mm_scratch)


cdef void ffn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    layernorm_rows(ws.x, L.ffn_norm_w, L.ffn_norm_b, ws.xb, c.n, ws.n_embd, ws.norm_eps)


cdef void ffn_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    matmul_rows(c, &L.w_up.view, ws.xb, ws.n_embd, ws.h, ws.n_hidden, L.up_b, False, ws.mm_scratch)


cdef void activation(Workspace ws, Layer L, const Call* c) noexcept nogil:
    gelu_tanh(ws.h, ws.h, c.n * ws.n_hidden)


cdef Step[9] _STEPS = [attn_norm, qkv_matmul, kv_store, attention, out_matmul, ffn_norm, ffn_matmul,
                       activation, down_matmul]
LAYER = steps_table(_STEPS, sizeof(_STEPS) // sizeof(Step), "attn_norm qkv_matmul kv_store attention "
                    "out_matmul ffn_norm ffn_matmul activation down_matmul")
