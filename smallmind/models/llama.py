"""Llama-style decoder (SmolLM2, TinyLlama, the llama2.c stories models).

    x = embed[token]
    for each layer:
        h = rmsnorm(x);  q, k, v = wq h, wk h, wv h     (k, v: n_kv_head heads, GQA)
        q, k = rope(q, pos), rope(k, pos);  cache k, v
        x += wo attention(q, cache)
        h = rmsnorm(x);  x += down(silu(gate h) * up h)
    logits = output(rmsnorm(x))

The layer, step by step, is ``_llama.pyx``; its tensors are ``spec.py``'s llama table.
"""
from __future__ import annotations

import numpy as np

from .._core._attention import rope
from . import _llama
from .base import DecoderModel


def rope_inv_freq(n_rot: int, theta: float, scale: float = 1.0) -> np.ndarray:
    """inv_freq[j] = theta^(-2j / n_rot) / scale for the n_rot/2 rotated pairs."""
    j = np.arange(n_rot // 2, dtype=np.float64)
    return (theta ** (-2.0 * j / n_rot) / scale).astype(np.float32)


class Llama(DecoderModel):
    arch = "llama"
    steps = _llama.LAYER

    def __new__(cls, config, tensors):
        # Gemma 3 is a Llama variant: Llama(gemma3 config) builds its subclass (gemma3.py).
        if cls is Llama and config.arch == "gemma3":
            from .gemma3 import Gemma3
            return super().__new__(Gemma3)
        return super().__new__(cls)

    def _layer_options(self, i: int) -> dict:
        c = self.config
        return {"inv_freq": rope_inv_freq(c.rope_dim, c.rope_theta, c.rope_scale), "neox": c.rope_neox}

    def rotate_cached_keys(self, cache, start: int, count: int, delta: int) -> None:
        c = self.config
        for i, layer in enumerate(self.layers):
            inv_freq = layer.inv_freq_array
            assert inv_freq is not None  # every rotary layer has its frequencies
            for head in range(c.n_kv_head):
                rows = cache.k[i, head, start:start + count]
                rope(rows, float(delta), 1, c.head_dim, inv_freq, n_rot=2 * len(inv_freq),
                     neox=c.rope_neox, pos_step=0.0)
