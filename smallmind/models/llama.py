"""Llama-style decoder (and Gemma 3, its close cousin).

    x = embed[token] (* sqrt(n_embd) for Gemma)
    for each layer:
        h = rmsnorm(x);  q, k, v = wq h, wk h, wv h     (k, v: n_kv_head heads, GQA)
        [Gemma: q, k = rmsnorm per head]
        q, k = rope(q, pos), rope(k, pos);  cache k, v
        a = wo attention(q, cache)            [Gemma: a = rmsnorm(a); local layers see a window]
        x += a
        h = rmsnorm(x);  f = down(silu(gate h) * up h)     [Gemma: gelu, f = rmsnorm(f)]
        x += f
    logits = output(rmsnorm(x))

The per-layer step is ``smallmind._core._blocks.llama_block``.
"""
from __future__ import annotations

import math

import numpy as np

from .._core import _blocks
from .._core._attention import rope
from .base import DecoderModel


def rope_inv_freq(n_rot: int, theta: float, scale: float = 1.0) -> np.ndarray:
    """inv_freq[j] = theta^(-2j / n_rot) / scale for the n_rot/2 rotated pairs."""
    j = np.arange(n_rot // 2, dtype=np.float64)
    return (theta ** (-2.0 * j / n_rot) / scale).astype(np.float32)


class Llama(DecoderModel):
    arch = "llama"

    @property
    def gemma(self) -> bool:
        return self.config.arch == "gemma3"

    def _is_global(self, i: int) -> bool:
        pattern = self.config.sliding_window_pattern
        return pattern <= 0 or (i + 1) % pattern == 0

    def _layer(self, i: int) -> _blocks.Layer:
        c = self.config
        d, h, hd = c.n_embd, c.n_hidden, c.head_dim
        q_dim, kv_dim = c.n_head * hd, c.n_kv_head * hd
        p = f"blk.{i}."
        weights = {
            "attn_q": self._weight(p + "attn_q.weight", (q_dim, d)),
            "attn_k": self._weight(p + "attn_k.weight", (kv_dim, d)),
            "attn_v": self._weight(p + "attn_v.weight", (kv_dim, d)),
            "attn_output": self._weight(p + "attn_output.weight", (d, q_dim)),
            "ffn_gate": self._weight(p + "ffn_gate.weight", (h, d)),
            "ffn_up": self._weight(p + "ffn_up.weight", (h, d)),
            "ffn_down": self._weight(p + "ffn_down.weight", (d, h)),
        }
        vectors = {
            "attn_norm.weight": self._vector(p + "attn_norm.weight", d),
            "ffn_norm.weight": self._vector(p + "ffn_norm.weight", d),
        }
        window = 0
        theta = c.rope_theta
        if self.gemma:
            for name, n in (("attn_q_norm", hd), ("attn_k_norm", hd),
                            ("post_attention_norm", d), ("post_ffw_norm", d)):
                vectors[name + ".weight"] = self._vector(p + name + ".weight", n)
            if not self._is_global(i):
                window, theta = c.sliding_window, c.rope_theta_local
        n_rot = int(c.extra.get("rope_dim", hd))  # the loaders' key (rope.dimension_count)
        scale = c.rope_scale if (not self.gemma or self._is_global(i)) else 1.0
        return _blocks.Layer(weights, vectors, n_embd=d, n_hidden=h, q_dim=q_dim, kv_dim=kv_dim,
                             head_dim=hd, attn_scale=c.attn_scale or 1.0 / math.sqrt(hd),
                             inv_freq=rope_inv_freq(n_rot, theta, scale), window=window)

    def _block(self, layer, ws, i, pos0, n, n_threads):
        _blocks.llama_block(layer, ws, i, pos0, n, n_threads, self.config.rope_neox, self.gemma)

    def rotate_cached_keys(self, cache, start: int, count: int, delta: int) -> None:
        c = self.config
        for i, layer in enumerate(self.layers):
            inv_freq = layer.inv_freq_array
            for head in range(c.n_kv_head):
                rows = cache.k[i, head, start:start + count]
                rope(rows, float(delta), 1, c.head_dim, inv_freq, n_rot=2 * len(inv_freq),
                     neox=c.rope_neox, pos_step=0.0)
