"""GPT-2 style decoder: learned positions, pre-LayerNorm blocks, fused QKV, GELU MLP.

    x = wte[token] + wpe[pos]
    for each layer:  x += proj(attn(ln1(x)));  x += down(gelu(up(ln2(x))))
    logits = lm_head(ln_f(x))

The layer, step by step, is ``_gpt2.pyx``; its tensors are ``spec.py``'s GPT-2 table.
"""
from __future__ import annotations

from . import _gpt2
from .base import DecoderModel


class GPT2(DecoderModel):
    arch = "gpt2"
    steps = _gpt2.LAYER
    final_rmsnorm = False
