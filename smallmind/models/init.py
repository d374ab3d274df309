"""Seeded random weights for any config (tests, benchmarks, the seed workload)."""
from __future__ import annotations

import numpy as np

from ..tensors import GGMLType, TensorData
from .config import ModelConfig


def random_tensors(config: ModelConfig, seed: int = 42, std: float = 0.02) -> dict[str, TensorData]:
    """Every tensor the model of ``config`` needs: N(0, std) matrices, embeddings and biases;
    norm weights 1, norm biases 0. Deterministic in ``seed``."""
    c = config
    rng = np.random.default_rng(seed)
    d, h, hd = c.n_embd, c.n_hidden, c.head_dim
    q, kv = c.n_head * hd, c.n_kv_head * hd
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (c.vocab_size, d)}
    if c.arch == "gpt2":
        shapes["position_embd.weight"] = (c.n_ctx, d)
    for i in range(c.n_layer):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = (d,)
        if c.arch == "gpt2":
            shapes[p + "attn_norm.bias"] = (d,)
            shapes[p + "attn_qkv.weight"] = (q + 2 * kv, d)
            if c.bias:
                shapes[p + "attn_qkv.bias"] = (q + 2 * kv,)
        else:
            shapes[p + "attn_q.weight"] = (q, d)
            shapes[p + "attn_k.weight"] = (kv, d)
            shapes[p + "attn_v.weight"] = (kv, d)
        shapes[p + "attn_output.weight"] = (d, q)
        shapes[p + "ffn_norm.weight"] = (d,)
        if c.arch != "gpt2":
            shapes[p + "ffn_gate.weight"] = (h, d)
        shapes[p + "ffn_up.weight"] = (h, d)
        shapes[p + "ffn_down.weight"] = (d, h)
        if c.arch == "gpt2":
            shapes[p + "ffn_norm.bias"] = (d,)
            if c.bias:
                shapes[p + "attn_output.bias"] = (d,)
                shapes[p + "ffn_up.bias"] = (h,)
                shapes[p + "ffn_down.bias"] = (d,)
        if c.arch == "gemma3":
            for name, n in (("attn_q_norm", hd), ("attn_k_norm", hd),
                            ("post_attention_norm", d), ("post_ffw_norm", d)):
                shapes[p + name + ".weight"] = (n,)
    shapes["output_norm.weight"] = (d,)
    if c.arch == "gpt2":
        shapes["output_norm.bias"] = (d,)
    if not c.tie_embeddings:
        shapes["output.weight"] = (c.vocab_size, d)

    tensors = {}
    for name, shape in shapes.items():
        if "norm" in name:
            value = 1.0 if name.endswith(".weight") else 0.0
            data = np.full(shape, value, dtype=np.float32)
        else:
            data = rng.normal(0.0, std, size=shape).astype(np.float32)
        tensors[name] = TensorData(name, GGMLType.F32, shape, data)
    return tensors
