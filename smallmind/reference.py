"""Plain NumPy (float64) forward passes of GPT-2, Llama and Gemma 3: read these first.

Each function is a whole model in a screenful of NumPy: the mathematics that the fast
path (``models/_gpt2.pyx``, ``_llama.pyx``, ``_gemma3.pyx``: the same steps on float32
kernels, over a KV cache) must reproduce. The tests check the engine's logits against
them (``tests/test_engine.py``, ``tests/test_gemma3.py``). Written from the architecture
descriptions, sharing no code with smallmind's kernels.

    from smallmind.reference import llama_logits
    logits = llama_logits(config, tensors, token_ids)     # (len(token_ids), vocab) float64

``tensors`` maps GGUF names to objects with ``data`` and ``shape`` (``TensorData``).
"""
from __future__ import annotations

import math

import numpy as np


def _layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + (0 if b is None else b)


def _rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _attend(q, k, v, n_head, n_kv_head, scale, window=0):
    """q (T, H*hd), k/v (T, KVH*hd), causal."""
    T = q.shape[0]
    hd = q.shape[1] // n_head
    group = n_head // n_kv_head
    out = np.zeros_like(q)
    mask = np.tril(np.ones((T, T), dtype=bool))
    if window > 0:
        mask &= ~np.tril(np.ones((T, T), dtype=bool), -window)
    for h in range(n_head):
        kh = h // group
        qh = q[:, h * hd:(h + 1) * hd]
        kk = k[:, kh * hd:(kh + 1) * hd]
        vv = v[:, kh * hd:(kh + 1) * hd]
        s = qh @ kk.T * scale
        s = np.where(mask, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        out[:, h * hd:(h + 1) * hd] = s @ vv
    return out


def _f(tensors, name):
    t = tensors[name]
    return np.asarray(t.data, dtype=np.float64).reshape(t.shape)


def _get(tensors, name):
    return _f(tensors, name) if name in tensors else None


def gpt2_logits(config, tensors, tokens):
    c = config
    T = len(tokens)
    x = _f(tensors, "token_embd.weight")[tokens] + _f(tensors, "position_embd.weight")[:T]
    q_dim = c.n_head * c.head_dim
    kv_dim = c.n_kv_head * c.head_dim
    for i in range(c.n_layer):
        p = f"blk.{i}."
        h = _layernorm(x, _f(tensors, p + "attn_norm.weight"), _get(tensors, p + "attn_norm.bias"),
                       c.norm_eps)
        qkv = h @ _f(tensors, p + "attn_qkv.weight").T
        if p + "attn_qkv.bias" in tensors:
            qkv = qkv + _f(tensors, p + "attn_qkv.bias")
        q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        a = _attend(q, k, v, c.n_head, c.n_kv_head, 1 / math.sqrt(c.head_dim))
        a = a @ _f(tensors, p + "attn_output.weight").T
        if p + "attn_output.bias" in tensors:
            a = a + _f(tensors, p + "attn_output.bias")
        x = x + a
        h = _layernorm(x, _f(tensors, p + "ffn_norm.weight"), _get(tensors, p + "ffn_norm.bias"), c.norm_eps)
        u = h @ _f(tensors, p + "ffn_up.weight").T
        if p + "ffn_up.bias" in tensors:
            u = u + _f(tensors, p + "ffn_up.bias")
        m = _gelu_tanh(u) @ _f(tensors, p + "ffn_down.weight").T
        if p + "ffn_down.bias" in tensors:
            m = m + _f(tensors, p + "ffn_down.bias")
        x = x + m
    x = _layernorm(x, _f(tensors, "output_norm.weight"), _get(tensors, "output_norm.bias"), c.norm_eps)
    out = _f(tensors, "output.weight") if "output.weight" in tensors else _f(tensors, "token_embd.weight")
    return x @ out.T


def _rope(x, n_heads, hd, theta, neox, positions):
    x = x.copy()
    half = hd // 2
    inv = theta ** (-2.0 * np.arange(half) / hd)
    ang = positions[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    for h in range(n_heads):
        seg = x[:, h * hd:(h + 1) * hd]
        if neox:
            a, b = seg[:, :half].copy(), seg[:, half:].copy()
            seg[:, :half] = a * cos - b * sin
            seg[:, half:] = a * sin + b * cos
        else:
            a, b = seg[:, 0::2].copy(), seg[:, 1::2].copy()
            seg[:, 0::2] = a * cos - b * sin
            seg[:, 1::2] = a * sin + b * cos
    return x


def llama_logits(config, tensors, tokens):
    c = config
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    x = _f(tensors, "token_embd.weight")[tokens] * c.embed_scale
    hd = c.head_dim
    for i in range(c.n_layer):
        p = f"blk.{i}."
        h = _rmsnorm(x, _f(tensors, p + "attn_norm.weight"), c.norm_eps)
        q = h @ _f(tensors, p + "attn_q.weight").T
        k = h @ _f(tensors, p + "attn_k.weight").T
        v = h @ _f(tensors, p + "attn_v.weight").T
        q = _rope(q, c.n_head, hd, c.rope_theta, c.rope_neox, pos)
        k = _rope(k, c.n_kv_head, hd, c.rope_theta, c.rope_neox, pos)
        a = _attend(q, k, v, c.n_head, c.n_kv_head, c.attn_scale or 1 / math.sqrt(hd))
        x = x + a @ _f(tensors, p + "attn_output.weight").T
        h = _rmsnorm(x, _f(tensors, p + "ffn_norm.weight"), c.norm_eps)
        g = h @ _f(tensors, p + "ffn_gate.weight").T
        u = h @ _f(tensors, p + "ffn_up.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ _f(tensors, p + "ffn_down.weight").T
    x = _rmsnorm(x, _f(tensors, "output_norm.weight"), c.norm_eps)
    out = _f(tensors, "output.weight") if "output.weight" in tensors else _f(tensors, "token_embd.weight")
    return x @ out.T


def gemma3_logits(config, tensors, tokens):
    """Gemma 3 (llama.cpp's LLM_ARCH_GEMMA3 graph) in float64.

    ``tensors`` maps names to objects with float ``data`` and ``shape`` (dequantise
    quantised GGUF tensors first). The GGUF norm weights already hold HF's ``1 + w``
    (llama.cpp's converter adds the one), so every RMSNorm is a plain ``x / rms * w``.
    Layers ``i`` with ``(i + 1) % sliding_window_pattern == 0`` attend globally with
    ``rope_theta`` (and linear ``rope_scale``); the others see the last ``sliding_window``
    positions with ``rope_theta_local``.
    """
    c = config
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    hd = c.head_dim
    eps = c.norm_eps
    emb = tensors["token_embd.weight"]
    table = np.asarray(emb.data).reshape(emb.shape)  # float32 is enough to hold it; rows go to f64
    x = table[np.asarray(tokens)].astype(np.float64) * c.embed_scale
    scale = c.attn_scale or 1 / math.sqrt(hd)

    def head_norm(m, n_heads, w):
        m = m.reshape(T, n_heads, hd)
        return _rmsnorm(m, w, eps).reshape(T, n_heads * hd)

    for i in range(c.n_layer):
        p = f"blk.{i}."
        is_global = c.sliding_window_pattern <= 0 or (i + 1) % c.sliding_window_pattern == 0
        theta = c.rope_theta if is_global else c.rope_theta_local
        layer_pos = pos / c.rope_scale if is_global else pos
        window = 0 if is_global else c.sliding_window
        h = _rmsnorm(x, _f(tensors, p + "attn_norm.weight"), eps)
        q = head_norm(h @ _f(tensors, p + "attn_q.weight").T, c.n_head, _f(tensors, p + "attn_q_norm.weight"))
        k = head_norm(h @ _f(tensors, p + "attn_k.weight").T, c.n_kv_head,
                      _f(tensors, p + "attn_k_norm.weight"))
        v = h @ _f(tensors, p + "attn_v.weight").T
        q = _rope(q, c.n_head, hd, theta, True, layer_pos)
        k = _rope(k, c.n_kv_head, hd, theta, True, layer_pos)
        a = _attend(q, k, v, c.n_head, c.n_kv_head, scale, window) @ _f(tensors, p + "attn_output.weight").T
        x = x + _rmsnorm(a, _f(tensors, p + "post_attention_norm.weight"), eps)
        h = _rmsnorm(x, _f(tensors, p + "ffn_norm.weight"), eps)
        g = h @ _f(tensors, p + "ffn_gate.weight").T
        u = h @ _f(tensors, p + "ffn_up.weight").T
        f = (_gelu_tanh(g) * u) @ _f(tensors, p + "ffn_down.weight").T
        x = x + _rmsnorm(f, _f(tensors, p + "post_ffw_norm.weight"), eps)
    x = _rmsnorm(x, _f(tensors, "output_norm.weight"), eps)
    out = tensors["output.weight"] if "output.weight" in tensors else emb
    out_table = np.asarray(out.data).reshape(out.shape)
    logits = np.empty((T, out.shape[0]))
    step = 16384  # the vocabulary is large: convert the head to float64 a slab at a time
    for r in range(0, out.shape[0], step):
        logits[:, r:r + step] = x @ out_table[r:r + step].astype(np.float64).T
    if c.final_logit_softcap > 0:
        logits = c.final_logit_softcap * np.tanh(logits / c.final_logit_softcap)
    return logits
