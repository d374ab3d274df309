# cython: language_level=3
"""Fused transformer blocks: one call runs a whole layer for n token positions.

Each block is the layer's forward pass written top to bottom over the kernels
declared in the other ``.pxd`` files, without the GIL and without allocating: every
intermediate lives in a :class:`Workspace` prepared once per session. Decoding is the
n == 1 case of the same code, so prefill and decode cannot drift apart.

The per-layer Python overhead is a single call taking already-validated objects, which
is what lets a 2-layer, 128-wide model decode tens of thousands of tokens a second.
"""
import numpy as np

cimport numpy as cnp
from libc.math cimport tanhf
from libc.string cimport memcpy

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC

from smallmind._core._attention cimport attention, attention_scratch_floats, rope
from smallmind._core._elementwise cimport add, scale, swiglu
from smallmind._core._gelu cimport gelu_tanh, geglu
from smallmind._core._matmul cimport Weight, WeightView, get_row, matmul, matmul_scratch_bytes
from smallmind._core._norm cimport layernorm, rmsnorm

from smallmind.errors import ShapeError

cnp.import_array()

#: Names of the steps a block times when profiling, in the order of ``Workspace.prof``.
OPS = ("norm", "qkv_matmul", "rope", "kv_store", "attention", "out_matmul",
       "ffn_matmul", "activation", "embed", "lm_head")
cdef enum:
    OP_NORM, OP_QKV, OP_ROPE, OP_KV, OP_ATTN, OP_OUT, OP_FFN, OP_ACT, OP_EMBED, OP_HEAD, N_OPS


cdef inline long long _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


cdef inline long long _lap(Workspace ws, int op, long long t0) noexcept nogil:
    """Charge the time since t0 to op when profiling; returns the new start."""
    cdef long long t1
    if not ws.profiling:
        return 0
    t1 = _now()
    ws.prof[op] += <double>(t1 - t0)
    return t1


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


cdef class Layer:
    """One layer's weights, validated once. Missing pieces are None / NULL."""
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
    cdef Py_ssize_t window
    cdef float attn_scale
    cdef readonly object inv_freq_array
    cdef object _keep

    def __init__(self, dict weights, dict vectors, *, Py_ssize_t n_embd, Py_ssize_t n_hidden,
                 Py_ssize_t q_dim, Py_ssize_t kv_dim, int head_dim, float attn_scale,
                 object inv_freq=None, Py_ssize_t window=0):
        self.wqkv = weights.get("attn_qkv")
        self.wq = weights.get("attn_q")
        self.wk = weights.get("attn_k")
        self.wv = weights.get("attn_v")
        self.wo = weights["attn_output"]
        self.w_gate = weights.get("ffn_gate")
        self.w_up = weights["ffn_up"]
        self.w_down = weights["ffn_down"]
        self._check(self.wqkv, "attn_qkv", q_dim + 2 * kv_dim, n_embd)
        self._check(self.wq, "attn_q", q_dim, n_embd)
        self._check(self.wk, "attn_k", kv_dim, n_embd)
        self._check(self.wv, "attn_v", kv_dim, n_embd)
        if self.wqkv is None and (self.wq is None or self.wk is None or self.wv is None):
            raise ShapeError("a layer needs attn_qkv or all of attn_q, attn_k, attn_v")
        self._check(self.wo, "attn_output", n_embd, q_dim)
        self._check(self.w_gate, "ffn_gate", n_hidden, n_embd)
        self._check(self.w_up, "ffn_up", n_hidden, n_embd)
        self._check(self.w_down, "ffn_down", n_embd, n_hidden)
        v = vectors
        self.attn_norm_w = _vec(v.get("attn_norm.weight"), "attn_norm.weight", n_embd)
        self.attn_norm_b = _vec(v.get("attn_norm.bias"), "attn_norm.bias", n_embd)
        self.ffn_norm_w = _vec(v.get("ffn_norm.weight"), "ffn_norm.weight", n_embd)
        self.ffn_norm_b = _vec(v.get("ffn_norm.bias"), "ffn_norm.bias", n_embd)
        self.qkv_b = _vec(v.get("attn_qkv.bias"), "attn_qkv.bias", q_dim + 2 * kv_dim)
        self.wo_b = _vec(v.get("attn_output.bias"), "attn_output.bias", n_embd)
        self.up_b = _vec(v.get("ffn_up.bias"), "ffn_up.bias", n_hidden)
        self.down_b = _vec(v.get("ffn_down.bias"), "ffn_down.bias", n_embd)
        self.q_norm_w = _vec(v.get("attn_q_norm.weight"), "attn_q_norm.weight", head_dim)
        self.k_norm_w = _vec(v.get("attn_k_norm.weight"), "attn_k_norm.weight", head_dim)
        self.post_attn_norm_w = _vec(v.get("post_attention_norm.weight"),
                                     "post_attention_norm.weight", n_embd)
        self.post_ffn_norm_w = _vec(v.get("post_ffw_norm.weight"), "post_ffw_norm.weight", n_embd)
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
        self.window = window
        self.attn_scale = attn_scale
        self._keep = (weights, vectors, inv_freq)

    @staticmethod
    def _check(Weight w, str name, Py_ssize_t rows, Py_ssize_t cols):
        if w is not None and (w.view.rows != rows or w.view.cols != cols):
            raise ShapeError(f"{name}: expected shape ({rows}, {cols}), got {w.shape}")


cdef class Workspace:
    """Every buffer a forward pass touches, for up to ``max_tokens`` positions at once.

    Built once per session from arrays the caller takes from the buffer pool, so the
    decode loop never allocates. The KV cache arrays are (n_layer, n_kv_head, capacity,
    head_dim) float32.
    """
    cdef float* x          # (max_tokens, n_embd) residual stream
    cdef float* xb         # (max_tokens, n_embd) normalised input / branch output
    cdef float* qkv        # (max_tokens, q_dim + 2 kv_dim)
    cdef float* att        # (max_tokens, q_dim)
    cdef float* h          # (max_tokens, n_hidden)
    cdef float* h2         # (max_tokens, n_hidden)
    cdef float* logits     # (vocab,) one row of logits
    cdef float* att_scratch
    cdef char* mm_scratch
    cdef float* k_cache
    cdef float* v_cache
    cdef int* tokens       # (max_tokens,)
    cdef double* prof
    cdef readonly Py_ssize_t max_tokens, n_embd, n_hidden, q_dim, kv_dim, vocab
    cdef readonly Py_ssize_t capacity, n_layer
    cdef readonly int n_head, n_kv_head, head_dim
    cdef public bint profiling
    cdef readonly object arrays
    cdef float norm_eps

    def __init__(self, dict arrays, *, Py_ssize_t max_tokens, Py_ssize_t n_embd,
                 Py_ssize_t n_hidden, int n_head, int n_kv_head, int head_dim,
                 Py_ssize_t vocab, Py_ssize_t capacity, Py_ssize_t n_layer, float norm_eps,
                 Py_ssize_t mm_scratch_bytes):
        self.max_tokens = max_tokens
        self.n_embd = n_embd
        self.n_hidden = n_hidden
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.head_dim = head_dim
        self.q_dim = n_head * head_dim
        self.kv_dim = n_kv_head * head_dim
        self.vocab = vocab
        self.capacity = capacity
        self.n_layer = n_layer
        self.norm_eps = norm_eps
        self.x = _buf(arrays["x"], "x", max_tokens * n_embd)
        self.xb = _buf(arrays["xb"], "xb", max_tokens * n_embd)
        self.qkv = _buf(arrays["qkv"], "qkv", max_tokens * (self.q_dim + 2 * self.kv_dim))
        self.att = _buf(arrays["att"], "att", max_tokens * self.q_dim)
        self.h = _buf(arrays["h"], "h", max_tokens * n_hidden)
        self.h2 = _buf(arrays["h2"], "h2", max_tokens * n_hidden)
        self.logits = _buf(arrays["logits"], "logits", vocab)
        self.att_scratch = _buf(arrays["att_scratch"], "att_scratch",
                                attention_scratch_floats(capacity, 1))
        self.prof = <double*> cnp.PyArray_DATA(arrays["prof"])
        cache_n = n_layer * n_kv_head * capacity * head_dim
        self.k_cache = _buf(arrays["k_cache"], "k_cache", cache_n)
        self.v_cache = _buf(arrays["v_cache"], "v_cache", cache_n)
        mm = arrays["mm_scratch"]
        if mm.nbytes < mm_scratch_bytes:
            raise ShapeError("workspace buffer mm_scratch is too small")
        self.mm_scratch = <char*> cnp.PyArray_DATA(mm)
        tok = arrays["tokens"]
        if tok.dtype != np.int32 or tok.size < max_tokens:
            raise ShapeError("workspace buffer tokens: expected int32 of max_tokens")
        self.tokens = <int*> cnp.PyArray_DATA(tok)
        self.profiling = False
        self.arrays = arrays

    def set_tokens(self, tokens, Py_ssize_t start, Py_ssize_t n):
        """Copy tokens[start:start+n] into the token buffer, checking each id once."""
        cdef Py_ssize_t t
        cdef long tok
        if n < 1 or n > self.max_tokens:
            raise ShapeError(f"{n} tokens do not fit the workspace (1..{self.max_tokens})")
        for t in range(n):
            tok = tokens[start + t]
            if tok < 0 or tok >= self.vocab:
                from smallmind.errors import TokenizerError
                raise TokenizerError(f"token id {tok} at index {start + t} is outside the "
                                     f"vocabulary [0, {self.vocab})")
            self.tokens[t] = <int> tok


def attention_scratch_size(Py_ssize_t capacity, int n_threads):
    return attention_scratch_floats(capacity, n_threads)


def scratch_bytes(Weight w, Py_ssize_t n):
    return matmul_scratch_bytes(&w.view, n)


cdef inline void _store_kv(Workspace ws, int layer, Py_ssize_t pos0, Py_ssize_t n,
                           const float* k, const float* v, Py_ssize_t ld) noexcept nogil:
    """Copy n rows of K and V (row t, KV head h at k[t*ld + h*head_dim]) into the cache."""
    cdef Py_ssize_t t, hh, hd = ws.head_dim
    cdef Py_ssize_t head_stride = ws.capacity * hd
    cdef float* kc = ws.k_cache + layer * ws.n_kv_head * head_stride
    cdef float* vc = ws.v_cache + layer * ws.n_kv_head * head_stride
    for t in range(n):
        for hh in range(ws.n_kv_head):
            memcpy(kc + hh * head_stride + (pos0 + t) * hd, k + t * ld + hh * hd, hd * sizeof(float))
            memcpy(vc + hh * head_stride + (pos0 + t) * hd, v + t * ld + hh * hd, hd * sizeof(float))


cdef inline void _attend(Workspace ws, Layer L, int layer, Py_ssize_t pos0, Py_ssize_t n,
                         Py_ssize_t ldq, int n_threads) noexcept nogil:
    cdef Py_ssize_t head_stride = ws.capacity * ws.head_dim
    cdef Py_ssize_t off = layer * ws.n_kv_head * head_stride
    # att_scratch holds one score row of the whole cache: attention gets as many threads
    # as rows of the current length fit in it (all of them until it is half full).
    cdef Py_ssize_t rows = attention_scratch_floats(ws.capacity, 1) // attention_scratch_floats(pos0 + n, 1)
    attention(ws.qkv, n, ldq, ws.k_cache + off, ws.v_cache + off, head_stride, pos0,
              ws.n_head, ws.n_kv_head, ws.head_dim, L.attn_scale, L.window,
              ws.att, ws.q_dim, ws.att_scratch, <int>min(<Py_ssize_t>n_threads, rows))


def gpt2_block(Layer L, Workspace ws, int layer, Py_ssize_t pos0, Py_ssize_t n, int n_threads):
    """GPT-2 layer: x += proj(attn(ln1(x))); x += down(gelu(up(ln2(x))))."""
    _check_call(ws, layer, pos0, n)
    cdef Py_ssize_t d = ws.n_embd, hid = ws.n_hidden, t
    cdef Py_ssize_t ldq = ws.q_dim + 2 * ws.kv_dim
    cdef float eps = ws.norm_eps
    cdef long long t0
    with nogil:
        t0 = _now() if ws.profiling else 0
        for t in range(n):
            layernorm(ws.x + t * d, L.attn_norm_w, L.attn_norm_b, ws.xb + t * d, d, eps)
        t0 = _lap(ws, OP_NORM, t0)
        matmul(&L.wqkv.view, ws.xb, n, d, ws.qkv, ldq, L.qkv_b, False, n_threads, ws.mm_scratch)
        t0 = _lap(ws, OP_QKV, t0)
        _store_kv(ws, layer, pos0, n, ws.qkv + ws.q_dim, ws.qkv + ws.q_dim + ws.kv_dim, ldq)
        t0 = _lap(ws, OP_KV, t0)
        _attend(ws, L, layer, pos0, n, ldq, n_threads)
        t0 = _lap(ws, OP_ATTN, t0)
        matmul(&L.wo.view, ws.att, n, ws.q_dim, ws.x, d, L.wo_b, True, n_threads, ws.mm_scratch)
        t0 = _lap(ws, OP_OUT, t0)
        for t in range(n):
            layernorm(ws.x + t * d, L.ffn_norm_w, L.ffn_norm_b, ws.xb + t * d, d, eps)
        t0 = _lap(ws, OP_NORM, t0)
        matmul(&L.w_up.view, ws.xb, n, d, ws.h, hid, L.up_b, False, n_threads, ws.mm_scratch)
        t0 = _lap(ws, OP_FFN, t0)
        gelu_tanh(ws.h, ws.h, n * hid)
        t0 = _lap(ws, OP_ACT, t0)
        matmul(&L.w_down.view, ws.h, n, hid, ws.x, d, L.down_b, True, n_threads, ws.mm_scratch)
        _lap(ws, OP_FFN, t0)


def llama_block(Layer L, Workspace ws, int layer, Py_ssize_t pos0, Py_ssize_t n, int n_threads,
                bint neox=False, bint gemma=False):
    """Llama layer (Gemma 3 when ``gemma``: QK-norm, post-norms, GeGLU).

    x += wo(attn(rope(q), rope(k), v)) with q, k, v from rmsnorm(x);
    x += down(silu(gate(h)) * up(h)) with h = rmsnorm(x).
    """
    _check_call(ws, layer, pos0, n)
    cdef Py_ssize_t d = ws.n_embd, hid = ws.n_hidden, t, hh
    cdef Py_ssize_t qd = ws.q_dim, kvd = ws.kv_dim, hd = ws.head_dim
    cdef Py_ssize_t ldq = qd + 2 * kvd
    cdef float eps = ws.norm_eps
    cdef float* q = ws.qkv
    cdef float* k = ws.qkv + qd
    cdef float* v = ws.qkv + qd + kvd
    cdef long long t0
    with nogil:
        t0 = _now() if ws.profiling else 0
        for t in range(n):
            rmsnorm(ws.x + t * d, L.attn_norm_w, ws.xb + t * d, d, eps)
        t0 = _lap(ws, OP_NORM, t0)
        matmul(&L.wq.view, ws.xb, n, d, q, ldq, NULL, False, n_threads, ws.mm_scratch)
        matmul(&L.wk.view, ws.xb, n, d, k, ldq, NULL, False, n_threads, ws.mm_scratch)
        matmul(&L.wv.view, ws.xb, n, d, v, ldq, NULL, False, n_threads, ws.mm_scratch)
        t0 = _lap(ws, OP_QKV, t0)
        if L.q_norm_w != NULL:
            for t in range(n):
                for hh in range(ws.n_head):
                    rmsnorm(q + t * ldq + hh * hd, L.q_norm_w, q + t * ldq + hh * hd, hd, eps)
                for hh in range(ws.n_kv_head):
                    rmsnorm(k + t * ldq + hh * hd, L.k_norm_w, k + t * ldq + hh * hd, hd, eps)
            t0 = _lap(ws, OP_NORM, t0)
        if L.n_rot > 0:
            rope(q, n, ldq, ws.n_head, hd, L.n_rot, pos0, 1.0, L.inv_freq, neox)
            rope(k, n, ldq, ws.n_kv_head, hd, L.n_rot, pos0, 1.0, L.inv_freq, neox)
        t0 = _lap(ws, OP_ROPE, t0)
        _store_kv(ws, layer, pos0, n, k, v, ldq)
        t0 = _lap(ws, OP_KV, t0)
        _attend(ws, L, layer, pos0, n, ldq, n_threads)
        t0 = _lap(ws, OP_ATTN, t0)
        if L.post_attn_norm_w != NULL:   # Gemma: x += norm(wo(att))
            matmul(&L.wo.view, ws.att, n, qd, ws.xb, d, NULL, False, n_threads, ws.mm_scratch)
            for t in range(n):
                rmsnorm(ws.xb + t * d, L.post_attn_norm_w, ws.xb + t * d, d, eps)
            add(ws.x, ws.xb, ws.x, n * d)
        else:
            matmul(&L.wo.view, ws.att, n, qd, ws.x, d, NULL, True, n_threads, ws.mm_scratch)
        t0 = _lap(ws, OP_OUT, t0)
        for t in range(n):
            rmsnorm(ws.x + t * d, L.ffn_norm_w, ws.xb + t * d, d, eps)
        t0 = _lap(ws, OP_NORM, t0)
        matmul(&L.w_gate.view, ws.xb, n, d, ws.h, hid, NULL, False, n_threads, ws.mm_scratch)
        matmul(&L.w_up.view, ws.xb, n, d, ws.h2, hid, NULL, False, n_threads, ws.mm_scratch)
        t0 = _lap(ws, OP_FFN, t0)
        if gemma:
            geglu(ws.h, ws.h2, ws.h, n * hid)
        else:
            swiglu(ws.h, ws.h2, ws.h, n * hid)
        t0 = _lap(ws, OP_ACT, t0)
        if L.post_ffn_norm_w != NULL:
            matmul(&L.w_down.view, ws.h, n, hid, ws.xb, d, NULL, False, n_threads, ws.mm_scratch)
            for t in range(n):
                rmsnorm(ws.xb + t * d, L.post_ffn_norm_w, ws.xb + t * d, d, eps)
            add(ws.x, ws.xb, ws.x, n * d)
        else:
            matmul(&L.w_down.view, ws.h, n, hid, ws.x, d, NULL, True, n_threads, ws.mm_scratch)
        _lap(ws, OP_FFN, t0)


cdef inline int _check_call(Workspace ws, int layer, Py_ssize_t pos0, Py_ssize_t n) except -1:
    if n < 1 or n > ws.max_tokens:
        raise ShapeError(f"block called for {n} positions; the workspace holds 1..{ws.max_tokens}")
    if layer < 0 or layer >= ws.n_layer:
        raise ShapeError(f"layer {layer} outside [0, {ws.n_layer})")
    if pos0 < 0 or pos0 + n > ws.capacity:
        raise ShapeError(f"positions {pos0}..{pos0 + n} outside the KV cache of {ws.capacity}")
    return 0


def embed(Weight token_embd, Workspace ws, Py_ssize_t n, Py_ssize_t pos0,
          Weight position_embd=None, float embed_scale=1.0):
    """x[t] = token_embd[tokens[t]] (* embed_scale) (+ position_embd[pos0 + t]).

    Token ids were range-checked by the caller when written into ``ws.tokens``.
    """
    cdef Py_ssize_t d = ws.n_embd, t
    cdef float* tmp = ws.xb
    cdef long long t0
    cdef bint learned = position_embd is not None
    if n < 1 or n > ws.max_tokens:
        raise ShapeError(f"embed called for {n} positions; the workspace holds 1..{ws.max_tokens}")
    if token_embd.view.cols != d:
        raise ShapeError("token_embd width does not match n_embd")
    if position_embd is not None and (position_embd.view.cols != d
                                      or pos0 < 0 or pos0 + n > position_embd.view.rows):
        raise ShapeError(f"positions {pos0}..{pos0 + n} exceed the learned position table")
    with nogil:
        t0 = _now() if ws.profiling else 0
        for t in range(n):
            get_row(&token_embd.view, ws.tokens[t], ws.x + t * d)
            if embed_scale != 1.0:
                scale(ws.x + t * d, embed_scale, ws.x + t * d, d)
            if learned:
                get_row(&position_embd.view, pos0 + t, tmp)
                add(ws.x + t * d, tmp, ws.x + t * d, d)
        _lap(ws, OP_EMBED, t0)


def lm_head(Weight output, Workspace ws, Py_ssize_t row0, Py_ssize_t n_rows, int n_threads,
            object norm_w, object norm_b=None, bint rms=False, float softcap=0.0,
            cnp.ndarray out=None):
    """Final norm of x[row0 : row0 + n_rows] into xb, then logits = xb @ output.T.

    Logits land in ``out`` ((n_rows, vocab) float32) or, for one row, in ws.logits.
    """
    cdef Py_ssize_t d = ws.n_embd, t
    cdef const float* w = _vec(norm_w, "output_norm.weight", d)
    cdef const float* b = _vec(norm_b, "output_norm.bias", d)
    cdef float* dst = ws.logits
    cdef long long t0
    if n_rows < 1 or row0 < 0 or row0 + n_rows > ws.max_tokens:
        raise ShapeError(f"rows {row0}..{row0 + n_rows} outside the workspace")
    if output.view.cols != d or output.view.rows != ws.vocab:
        raise ShapeError("output matrix does not match (vocab, n_embd)")
    if out is not None:
        dst = _buf(out, "out", n_rows * ws.vocab)
    elif n_rows != 1:
        raise ShapeError("several rows of logits need an `out` array")
    with nogil:
        t0 = _now() if ws.profiling else 0
        for t in range(n_rows):
            if rms:
                rmsnorm(ws.x + (row0 + t) * d, w, ws.xb + t * d, d, ws.norm_eps)
            else:
                layernorm(ws.x + (row0 + t) * d, w, b, ws.xb + t * d, d, ws.norm_eps)
        matmul(&output.view, ws.xb, n_rows, d, dst, ws.vocab, NULL, False, n_threads,
               ws.mm_scratch)
        if softcap > 0.0:
            _softcap(dst, n_rows * ws.vocab, softcap)
        _lap(ws, OP_HEAD, t0)


cdef void _softcap(float* x, Py_ssize_t n, float cap) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = cap * tanhf(x[i] / cap)
