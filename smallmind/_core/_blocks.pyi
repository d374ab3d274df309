"""Fused transformer layer steps over a preallocated Workspace (compiled: _blocks.pyx)."""
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from smallmind._core._matmul import Weight

OPS: Final[tuple[str, ...]]

class Layer:
    """One layer's weights, validated once. Missing pieces are None."""

    wqkv: Weight | None
    wq: Weight | None
    wk: Weight | None
    wv: Weight | None
    wo: Weight
    w_gate: Weight | None
    w_up: Weight
    w_down: Weight
    inv_freq_array: npt.NDArray[np.float32] | None
    def __init__(self, weights: dict[str, Weight | None], vectors: dict[str, npt.NDArray[np.float32] | None], *,
                 n_embd: int, n_hidden: int, q_dim: int, kv_dim: int, head_dim: int,
                 attn_scale: float, inv_freq: npt.NDArray[np.float32] | None = None,
                 window: int = 0) -> None: ...

class Workspace:
    """Every buffer a forward pass touches, for up to ``max_tokens`` positions at once."""

    max_tokens: int
    n_embd: int
    n_hidden: int
    q_dim: int
    kv_dim: int
    vocab: int
    capacity: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    profiling: bool
    arrays: dict[str, Any]
    def __init__(self, arrays: dict[str, Any], *, max_tokens: int, n_embd: int,
                 n_hidden: int, n_head: int, n_kv_head: int, head_dim: int, vocab: int,
                 capacity: int, n_layer: int, norm_eps: float, mm_scratch_bytes: int) -> None: ...
    def set_tokens(self, tokens: npt.ArrayLike, start: int, n: int) -> None: ...

def attention_scratch_size(capacity: int, n_threads: int) -> int: ...
def scratch_bytes(w: Weight, n: int) -> int: ...
def gpt2_block(L: Layer, ws: Workspace, layer: int, pos0: int, n: int, n_threads: int) -> None: ...
def llama_block(L: Layer, ws: Workspace, layer: int, pos0: int, n: int, n_threads: int,
                neox: bool = False, gemma: bool = False) -> None: ...
def embed(token_embd: Weight, ws: Workspace, n: int, pos0: int, position_embd: Weight | None = None,
          embed_scale: float = 1.0) -> None: ...
def lm_head(output: Weight, ws: Workspace, row0: int, n_rows: int, n_threads: int,
            norm_w: npt.NDArray[np.float32], norm_b: npt.NDArray[np.float32] | None = None,
            rms: bool = False, softcap: float = 0.0,
            out: npt.NDArray[np.float32] | None = None) -> None: ...
