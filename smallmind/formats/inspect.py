"""``smallmind inspect PATH``: a human-readable summary of a loaded model file."""
from __future__ import annotations

import math
from collections import Counter

from . import LoadedModel

_CONFIG_FIELDS = ("vocab_size", "n_ctx", "n_ctx_train", "n_embd", "n_layer", "n_head", "n_kv_head",
                  "head_dim", "n_hidden", "norm_eps", "bias", "tie_embeddings")
_ROPE_FIELDS = ("rope_theta", "rope_neox", "rope_scale", "rope_dim")
_GEMMA_FIELDS = ("rope_theta_local", "sliding_window", "sliding_window_pattern", "attn_scale",
                 "embed_scale", "final_logit_softcap")


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes} B" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _tokenizer_lines(loaded: LoadedModel) -> list[str]:
    md = loaded.metadata
    lines = []
    tok = loaded.tokenizer
    if tok is not None:
        lines.append(f"  loaded: {type(tok).__name__}, vocabulary {tok.vocab_size}, "
                     f"bos {tok.bos_id}, eos {tok.eos_id}")
    else:
        lines.append("  loaded: none")
    model = md.get("tokenizer.ggml.model")
    if model is not None:
        tokens = md.get("tokenizer.ggml.tokens") or []
        parts = [f"model {model!r}"]
        if "tokenizer.ggml.pre" in md:
            parts.append(f"pre {md['tokenizer.ggml.pre']!r}")
        parts.append(f"{len(tokens)} tokens")
        if "tokenizer.ggml.merges" in md:
            parts.append(f"{len(md['tokenizer.ggml.merges'])} merges")
        if "tokenizer.ggml.scores" in md:
            parts.append("scores")
        for key, label in (("bos_token_id", "bos"), ("eos_token_id", "eos"),
                           ("unknown_token_id", "unk"), ("padding_token_id", "pad")):
            value = md.get(f"tokenizer.ggml.{key}")
            if isinstance(value, int) and 0 <= value < len(tokens):
                parts.append(f"{label} {value} {tokens[value]!r}")
        for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
            if f"tokenizer.ggml.{key}" in md:
                parts.append(f"{key}={md[f'tokenizer.ggml.{key}']}")
        lines.append("  file: " + ", ".join(parts))
    lines.append(f"  chat template: {'yes' if loaded.chat_template else 'no'}"
                 + (f" ({len(loaded.chat_template)} chars)" if loaded.chat_template else ""))
    return lines


def describe(loaded: LoadedModel, *, max_tensors: int | None = None) -> str:
    """Architecture, hyper-parameters, tokenizer and every tensor (name, type, shape,
    bytes) with totals. ``max_tensors`` shortens the tensor list (totals stay exact)."""
    cfg = loaded.config
    out = []
    if loaded.path is not None:
        size = loaded.path.stat().st_size if loaded.path.exists() else None
        out.append(f"file:         {loaded.path}" + (f" ({_size(size)})" if size is not None else ""))
    out.append(f"format:       {loaded.format or 'unknown'}")
    name = cfg.extra.get("name") or loaded.metadata.get("general.name")
    out.append(f"architecture: {cfg.arch}" + (f"  ({name})" if name else ""))

    out.append("hyper-parameters:")
    fields = list(_CONFIG_FIELDS)
    if cfg.arch != "gpt2":
        fields += _ROPE_FIELDS
    if cfg.arch == "gemma3":
        fields += _GEMMA_FIELDS
    for field in fields:
        out.append(f"  {field:<24}{_fmt(getattr(cfg, field))}")
    for key, value in sorted(cfg.extra.items()):
        if key != "name":
            out.append(f"  {key:<24}{_fmt(value)}")

    out.append("tokenizer:")
    out.extend(_tokenizer_lines(loaded))

    tensors = list(loaded.tensors.values())
    width = max((len(t.name) for t in tensors), default=4)
    out.append(f"tensors ({len(tensors)}):")
    out.append(f"  {'name':<{width}}  {'type':<5}  {'shape':<16}  {'bytes':>12}")
    shown = tensors if max_tensors is None else tensors[:max_tensors]
    for t in shown:
        shape = "x".join(str(d) for d in t.shape)
        out.append(f"  {t.name:<{width}}  {t.type.name:<5}  {shape:<16}  {t.nbytes:>12,}")
    if len(shown) < len(tensors):
        out.append(f"  ... {len(tensors) - len(shown)} more")

    n_params = sum(math.prod(t.shape) for t in tensors)
    n_bytes = sum(t.nbytes for t in tensors)
    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    for t in tensors:
        by_type[t.type.name] += 1
        bytes_by_type[t.type.name] += t.nbytes
    out.append(f"total: {n_params:,} parameters in {_size(n_bytes)} "
               f"({8 * n_bytes / max(n_params, 1):.2f} bits per weight)")
    out.append("by type: " + ", ".join(f"{name} {count} tensors {_size(bytes_by_type[name])}"
                                        for name, count in by_type.most_common()))
    return "\n".join(out)
