# cython: language_level=3
"""The Gemma 3 layer, step by step: Llama's layer plus per-head Q/K norms, a norm on each
branch's output before it joins the residual stream, and a GELU-gated MLP:

    xb = rmsnorm(x)                         attn_norm
    q, k, v = Wq xb, Wk xb, Wv xb           qkv_matmul
    q, k = rmsnorm(q), rmsnorm(k)           qk_norm       (per head)
    q, k = rope(q, pos), rope(k, pos)       rope          (local layers: their own theta)
    cache[pos] = k, v                       kv_store
    att = attention(q, cache)               attention     (local layers: a sliding window)
    xb = Wo att                             out_matmul
    x += rmsnorm(xb)                        post_attn_norm
    xb = rmsnorm(x)                         ffn_norm
    h, h2 = Wgate xb, Wup xb                ffn_matmul
    h = gelu(h) * h2                        activation
    xb = Wdown h                            down_matmul
    x += rmsnorm(xb)                        post_ffn_norm

Which layers are local, and their window and rotary frequencies, are properties of each
Layer (set by ``models/gemma3.py``), not branches here.
"""
from smallmind._core._elementwise cimport add
from smallmind._core._gelu cimport geglu
from smallmind._core._norm cimport rmsnorm
from smallmind.models._layer cimport (Call, Layer, Step, Workspace, attention, kv_store, matmul_rows,
                                      over_rows, rmsnorm_rows, steps_table)
from smallmind.models._llama cimport attn_norm, ffn_matmul, ffn_norm, qkv_matmul, rope_qk


cdef void _qk_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t t, hh, hd = ws.head_dim
    cdef float* q
    cdef float* k
    for t in range(r0, r1):
        q = ws.q + t * ws.ldqkv
        k = ws.k + t * ws.ldqkv
        for hh in range(ws.n_head):
            rmsnorm(q + hh * hd, L.q_norm_w, q + hh * hd, hd, ws.norm_eps)
        for hh in range(ws.n_kv_head):
            rmsnorm(k + hh * hd, L.k_norm_w, k + hh * hd, hd, ws.norm_eps)


cdef void qk_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _qk_norm, 2 * (ws.n_head + ws.n_kv_head) * ws.head_dim)


cdef void out_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    matmul_rows(c, &L.wo.view, ws.att, ws.q_dim, ws.xb, ws.n_embd, NULL, False, ws.mm_scratch)


cdef void _post_attn_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_embd
    rmsnorm_rows(ws.xb + r0 * d, L.post_attn_norm_w, ws.xb + r0 * d, r1 - r0, d, ws.norm_eps)
    add(ws.x + r0 * d, ws.xb + r0 * d, ws.x + r0 * d, (r1 - r0) * d)


cdef void post_attn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _post_attn_norm, 3 * ws.n_embd)


cdef void _activation(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_hidden
    geglu(ws.h + r0 * d, ws.h2 + r0 * d, ws.h + r0 * d, (r1 - r0) * d)


cdef void activation(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _activation, 3 * ws.n_hidden)


cdef void down_matmul(Workspace ws, Layer L, const Call* c) noexcept nogil:
    matmul_rows(c, &L.w_down.view, ws.h, ws.n_hidden, ws.xb, ws.n_embd, NULL, False, ws.mm_scratch)


cdef void _post_ffn_norm(Workspace ws, Layer L, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t d = ws.n_embd
    rmsnorm_rows(ws.xb + r0 * d, L.post_ffn_norm_w, ws.xb + r0 * d, r1 - r0, d, ws.norm_eps)
    add(ws.x + r0 * d, ws.xb + r0 * d, ws.x + r0 * d, (r1 - r0) * d)


cdef void post_ffn_norm(Workspace ws, Layer L, const Call* c) noexcept nogil:
    over_rows(ws, L, c, _post_ffn_norm, 3 * ws.n_embd)


cdef Step[13] _STEPS = [attn_norm, qkv_matmul, qk_norm, rope_qk, kv_store, attention, out_matmul,
                        post_attn_norm, ffn_norm, ffn_matmul, activation, down_matmul, post_ffn_norm]
LAYER = steps_table(_STEPS, sizeof(_STEPS) // sizeof(Step), "attn_norm qkv_matmul qk_norm rope kv_store "
                    "attention out_matmul post_attn_norm ffn_norm ffn_matmul activation down_matmul "
                    "post_ffn_norm")
