"""GPT-2 style decoder: learned positions, pre-LayerNorm blocks, fused QKV, GELU MLP.

    x = wte[token] + wpe[pos]
    for each layer:  x += proj(attn(ln1(x)));  x += down(gelu(up(ln2(x))))
    logits = lm_head(ln_f(x))

The layer, step by step, is ``_gpt2.pyx``; its tensors are ``spec.py``'s GPT-2 table.
"""
from __future__ import annotations

from . import _gpt2, _layer
from .base import DecoderModel


class GPT2(DecoderModel):
    arch = "gpt2"
    steps = _gpt2.LAYER
    final_rmsnorm = False

    def __init__(self, config, tensors):
        super().__init__(config, tensors)
        self.position_embd = self._weight("position_embd.weight", (config.n_ctx_train, config.n_embd))

    def _embed(self, ws, n, pos0):
        _layer.embed(self.token_embd, ws, n, pos0, self.position_embd, 1.0)
