"""Which tensors each architecture reads: one table per architecture, derived from ModelConfig.

The table is the single statement of a model's weights. The loaders check files against it
(:func:`check_tensors`), :mod:`smallmind.models.init` draws random weights from it, each
model binds its kernels' weights through it, and :meth:`ModelConfig.n_params` counts it.

Names and shapes follow GGUF (llama.cpp's ``LLM_TENSOR_*`` names, numpy row-major shapes:
a ``(rows, cols)`` matrix maps ``cols`` inputs to ``rows`` outputs). A tensor that is not
``required`` may be absent; the model then does without it (an absent ``output.weight``
means the head reads the token embedding).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from ..errors import ModelFormatError, UnsupportedModelError
from .config import ModelConfig


class TensorSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    required: bool = True


def _gpt2_layer(c: ModelConfig) -> list[TensorSpec]:
    """LayerNorms with bias; fused QKV; GELU MLP; linear biases when ``config.bias``.

    (Listed in the order :mod:`.init` draws random weights, which seeded models depend on.)
    """
    d, h, qkv = c.n_embd, c.n_hidden, (c.n_head + 2 * c.n_kv_head) * c.head_dim
    bias = [TensorSpec("attn_qkv.bias", (qkv,))] if c.bias else []
    specs = [TensorSpec("attn_norm.weight", (d,)), TensorSpec("attn_norm.bias", (d,)),
             TensorSpec("attn_qkv.weight", (qkv, d)), *bias,
             TensorSpec("attn_output.weight", (d, c.n_head * c.head_dim)),
             TensorSpec("ffn_norm.weight", (d,)), TensorSpec("ffn_up.weight", (h, d)),
             TensorSpec("ffn_down.weight", (d, h)), TensorSpec("ffn_norm.bias", (d,))]
    if c.bias:
        specs += [TensorSpec("attn_output.bias", (d,)), TensorSpec("ffn_up.bias", (h,)),
                  TensorSpec("ffn_down.bias", (d,))]
    return specs


def _llama_layer(c: ModelConfig) -> list[TensorSpec]:
    """RMSNorms without bias; separate Q, K, V (K and V with n_kv_head heads); SwiGLU MLP."""
    d, h, q, kv = c.n_embd, c.n_hidden, c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    return [TensorSpec("attn_norm.weight", (d,)), TensorSpec("attn_q.weight", (q, d)),
            TensorSpec("attn_k.weight", (kv, d)), TensorSpec("attn_v.weight", (kv, d)),
            TensorSpec("attn_output.weight", (d, q)), TensorSpec("ffn_norm.weight", (d,)),
            TensorSpec("ffn_gate.weight", (h, d)), TensorSpec("ffn_up.weight", (h, d)),
            TensorSpec("ffn_down.weight", (d, h))]


def _gemma3_layer(c: ModelConfig) -> list[TensorSpec]:
    """Llama's layer plus per-head Q/K norms and norms on both branch outputs."""
    d, hd = c.n_embd, c.head_dim
    return _llama_layer(c) + [
        TensorSpec("attn_q_norm.weight", (hd,)), TensorSpec("attn_k_norm.weight", (hd,)),
        TensorSpec("post_attention_norm.weight", (d,)), TensorSpec("post_ffw_norm.weight", (d,))]


_LAYERS = {"gpt2": _gpt2_layer, "llama": _llama_layer, "gemma3": _gemma3_layer}


def layer_specs(config: ModelConfig) -> list[TensorSpec]:
    """The tensors of one layer, named without the ``blk.{i}.`` prefix."""
    try:
        return _LAYERS[config.arch](config)
    except KeyError:
        raise UnsupportedModelError(f"architecture {config.arch!r} is not supported "
                                    f"(supported: {', '.join(_LAYERS)})") from None


def _embeddings(config: ModelConfig) -> list[TensorSpec]:
    specs = [TensorSpec("token_embd.weight", (config.vocab_size, config.n_embd))]
    if config.learned_positions:
        specs.append(TensorSpec("position_embd.weight", (config.n_ctx_train, config.n_embd)))
    return specs


def _head(config: ModelConfig) -> list[TensorSpec]:
    d = config.n_embd
    specs = [TensorSpec("output_norm.weight", (d,))]
    if config.arch == "gpt2":
        specs.append(TensorSpec("output_norm.bias", (d,)))
    specs.append(TensorSpec("output.weight", (config.vocab_size, d), required=not config.tie_embeddings))
    return specs


def global_specs(config: ModelConfig) -> list[TensorSpec]:
    """The tensors outside the layers: embeddings, final norm, head."""
    return _embeddings(config) + _head(config)


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every tensor a model of ``config`` reads, with full GGUF names: embeddings, layers, head."""
    layer = layer_specs(config)
    specs = _embeddings(config)
    for i in range(config.n_layer):
        specs += [TensorSpec(f"blk.{i}.{s.name}", s.shape, s.required) for s in layer]
    return specs + _head(config)


def n_params(config: ModelConfig) -> int:
    """Parameters in the required tensors."""
    return sum(math.prod(s.shape) for s in tensor_specs(config) if s.required)


def expected_tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of :func:`tensor_specs`."""
    return {s.name: s.shape for s in tensor_specs(config)}


def check_tensors(config: ModelConfig, tensors: dict, *, path: Path | None = None) -> None:
    """Refuse a tensor set that does not match ``config``: missing or misshapen tensors
    are malformed files; extra ones are features smallmind lacks (ignoring them would
    run a different model). ``tensors`` maps names to objects with a ``shape``."""
    specs = tensor_specs(config)
    for name, shape, required in specs:
        tensor = tensors.get(name)
        if tensor is None:
            if required:
                raise ModelFormatError("tensor is missing", path=path, key=name)
        elif tuple(tensor.shape) != shape:
            raise ModelFormatError(f"shape {tuple(tensor.shape)} does not match the expected "
                                   f"{shape}", path=path, key=name)
    unexpected = sorted(set(tensors) - {s.name for s in specs})
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise UnsupportedModelError(f"{len(unexpected)} tensor(s) smallmind does not know how to "
                                    f"use for {config.arch}: {shown}", path=path, key=unexpected[0])
