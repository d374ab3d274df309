"""Model file loaders. Each produces a :class:`LoadedModel`: (config, tensors, tokenizer).

Loaders know nothing about kernels or models; tensors are raw :class:`TensorData`
(usually views into a memory map) named with GGUF's tensor names.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.config import ModelConfig
from ..tensors import TensorData, read_only_file_map
from ..tokenizers.base import Tokenizer


@dataclass
class LoadedModel:
    config: ModelConfig
    tensors: dict[str, TensorData]
    tokenizer: Tokenizer | None
    path: Path | None = None
    format: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None

    def release_pages(self) -> None:
        """Unmap every page of the file maps the tensors view from this process, once a model
        is built from them: repacked weights and copied vectors no longer read the maps (the
        pages stay in the page cache, for the next load), and a view still read faults its
        pages back in. Binding unmaps each repacked piece as it goes, but the kernel maps the
        neighbours of every faulting page back (64 KiB around it), which left 2-3 MiB of
        Gemma 3's file resident."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        maps: dict[int, mmap.mmap] = {}
        for tensor in self.tensors.values():
            mapping = read_only_file_map(tensor.data)
            if mapping is not None:
                maps[id(mapping)] = mapping
        for mapping in maps.values():
            mapping.madvise(mmap.MADV_DONTNEED)


#: Tensor names every loader produces (GGUF's own). Shapes are numpy (rows, cols).
#:   token_embd.weight (vocab, n_embd)         position_embd.weight (n_ctx, n_embd)   [gpt2]
#:   output_norm.weight / .bias                 output.weight (vocab, n_embd)          [absent if tied]
#:   blk.N.attn_norm.weight / .bias             blk.N.ffn_norm.weight / .bias
#:   blk.N.attn_qkv.weight / .bias (3*n_embd, n_embd)                                 [gpt2]
#:   blk.N.attn_q.weight / attn_k.weight / attn_v.weight                             [llama, gemma3]
#:   blk.N.attn_output.weight / .bias           blk.N.ffn_up.weight / .bias
#:   blk.N.ffn_down.weight / .bias              blk.N.ffn_gate.weight                   [llama, gemma3]
#:   blk.N.attn_q_norm.weight, attn_k_norm.weight, post_attention_norm.weight,
#:   post_ffw_norm.weight                                                              [gemma3]
TENSOR_NAMES_DOC = __doc__
