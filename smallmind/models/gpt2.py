"""GPT-2 style decoder: learned positions, pre-LayerNorm blocks, fused QKV, GELU MLP.

    x = wte[token] + wpe[pos]
    for each layer:  x += proj(attn(ln1(x)));  x += down(gelu(up(ln2(x))))
    logits = lm_head(ln_f(x))

The per-layer step is ``smallmind._core._blocks.gpt2_block``.
"""
from __future__ import annotations

import math

from .._core import _blocks
from .base import DecoderModel


class GPT2(DecoderModel):
    arch = "gpt2"

    def __init__(self, config, tensors):
        super().__init__(config, tensors)
        self.position_embd = self._weight("position_embd.weight", (config.n_ctx, config.n_embd))

    def _layer(self, i: int) -> _blocks.Layer:
        c = self.config
        d, h, qkv = c.n_embd, c.n_hidden, (c.n_head + 2 * c.n_kv_head) * c.head_dim
        p = f"blk.{i}."
        weights = {
            "attn_qkv": self._weight(p + "attn_qkv.weight", (qkv, d)),
            "attn_output": self._weight(p + "attn_output.weight", (d, c.n_head * c.head_dim)),
            "ffn_up": self._weight(p + "ffn_up.weight", (h, d)),
            "ffn_down": self._weight(p + "ffn_down.weight", (d, h)),
        }
        sizes = {"attn_norm": d, "ffn_norm": d, "attn_qkv": qkv, "attn_output": d,
                 "ffn_up": h, "ffn_down": d}
        vectors = {}
        for name, n in sizes.items():
            if name.endswith("norm"):
                vectors[name + ".weight"] = self._vector(p + name + ".weight", n)
            vectors[name + ".bias"] = self._vector(p + name + ".bias", n, required=c.bias)
        return _blocks.Layer(weights, vectors, n_embd=d, n_hidden=h, q_dim=c.n_head * c.head_dim,
                             kv_dim=c.n_kv_head * c.head_dim, head_dim=c.head_dim,
                             attn_scale=c.attn_scale or 1.0 / math.sqrt(c.head_dim))

    def _embed(self, ws, n, pos0):
        _blocks.embed(self.token_embd, ws, n, pos0, self.position_embd, 1.0)

    def _block(self, layer, ws, i, pos0, n, n_threads):
        _blocks.gpt2_block(layer, ws, i, pos0, n, n_threads)
