"""Type stub of the compiled _layer module (see _layer.pyx)."""
from collections.abc import Mapping

import numpy as np

from smallmind._core._matmul import Weight

class Layer:
    wqkv: Weight | None
    wq: Weight | None
    wk: Weight | None
    wv: Weight | None
    wo: Weight
    w_gate: Weight | None
    w_up: Weight
    w_down: Weight
    inv_freq_array: np.ndarray | None
    def __init__(self, tensors: Mapping[str, object], *, n_embd: int, n_hidden: int, q_dim: int,
                 kv_dim: int, head_dim: int, attn_scale: float, inv_freq: np.ndarray | None = ...,
                 neox: bool = ..., window: int = ...) -> None: ...

class Workspace:
    max_tokens: int
    n_embd: int
    n_hidden: int
    q_dim: int
    kv_dim: int
    ldqkv: int
    vocab: int
    capacity: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    arrays: dict[str, np.ndarray]
    def __init__(self, arrays: dict[str, np.ndarray | None], *, max_tokens: int, n_embd: int, n_hidden: int,
                 n_head: int, n_kv_head: int, head_dim: int, vocab: int, capacity: int, n_layer: int,
                 norm_eps: float, mm_scratch_bytes: int, max_segs: int = ...) -> None: ...
    max_segs: int
    rope_slots: int
    def set_tokens(self, tokens: object, start: int, n: int, row0: int = ...) -> None: ...

class Steps:
    names: tuple[str, ...]
    def __len__(self) -> int: ...

def scratch_bytes(w: Weight, n: int) -> int: ...
def packed_min_rows_count() -> int: ...
def _set_rows_split_min(floats: int) -> int: ...
def run_layers(steps: Steps, layers: list[Layer], ws: Workspace, pos0: int, n: int, n_threads: int,
               timings: np.ndarray | None = ..., only: int = ...) -> None: ...
def run_batch(steps: Steps, layers: list[Layer], ws: Workspace, caches: list[Workspace], spans: np.ndarray,
              n_packed: int, n_threads: int, timings: np.ndarray | None = ...) -> None: ...
def embed(token_embd: Weight, ws: Workspace, n: int, pos0: int, position_embd: Weight | None = ...,
          embed_scale: float = ..., row0: int = ...) -> None: ...
