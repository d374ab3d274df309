"""Causal attention over a KV cache, and rotary position embeddings (compiled: _attention.pyx)."""
import numpy as np
import numpy.typing as npt

def attention(q: npt.NDArray[np.float32], k_cache: npt.NDArray[np.float32],
              v_cache: npt.NDArray[np.float32], pos0: int, n_head: int, n_kv_head: int,
              scale: float | None = None, window: int = 0,
              out: npt.NDArray[np.float32] | None = None,
              n_threads: int = 1) -> npt.NDArray[np.float32]: ...
def rope(x: npt.NDArray[np.float32], pos0: float, n_heads: int, head_dim: int,
         inv_freq: npt.NDArray[np.float32], n_rot: int | None = None, neox: bool = False,
         pos_step: float = 1.0) -> npt.NDArray[np.float32]: ...
def rope_inv_freq(n_rot: int, theta: float, scale: float = 1.0) -> npt.NDArray[np.float32]: ...
