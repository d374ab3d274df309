"""Gemma 3: a Llama with per-head Q/K norms, normed branch outputs, a GELU-gated MLP,
embeddings scaled by sqrt(n_embd), soft-capped logits, and local layers.

    x = embed[token] * sqrt(n_embd)
    for each layer:
        h = rmsnorm(x);  q, k, v = wq h, wk h, wv h;  q, k = rmsnorm(q), rmsnorm(k)  (per head)
        q, k = rope(q, pos), rope(k, pos);  cache k, v
        x += rmsnorm(wo attention(q, cache))     (local layers: a sliding window)
        h = rmsnorm(x);  x += rmsnorm(down(gelu(gate h) * up h))
    logits = softcap(output(rmsnorm(x)))

Every ``sliding_window_pattern``-th layer is global (``rope_theta``, linear ``rope_scale``,
the whole context); the others are local (``rope_theta_local``, the last
``sliding_window`` positions). The layer, step by step, is ``_gemma3.pyx``; its tensors
are ``spec.py``'s gemma3 table.
"""
from __future__ import annotations

from . import _gemma3
from .llama import Llama, rope_inv_freq


class Gemma3(Llama):
    arch = "gemma3"
    steps = _gemma3.LAYER

    def _is_global(self, i: int) -> bool:
        pattern = self.config.sliding_window_pattern
        return pattern <= 0 or (i + 1) % pattern == 0

    def _layer_options(self, i: int) -> dict:
        c = self.config
        if self._is_global(i):
            inv_freq, window = rope_inv_freq(c.rope_dim, c.rope_theta, c.rope_scale), 0
        else:
            inv_freq, window = rope_inv_freq(c.rope_dim, c.rope_theta_local), c.sliding_window
        return {"inv_freq": inv_freq, "neox": c.rope_neox, "window": window}
