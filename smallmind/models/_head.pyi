"""Type stub of the compiled _head module (see _head.pyx)."""
import numpy as np

from smallmind._core._matmul import Weight
from smallmind.models._layer import Workspace

def lm_head(output: Weight, ws: Workspace, row0: int, n_rows: int, n_threads: int,
            norm_w: np.ndarray | None, norm_b: np.ndarray | None = ..., rms: bool = ...,
            softcap: float = ..., out: np.ndarray | None = ..., rows: np.ndarray | None = ...,
            peaks: np.ndarray | None = ...) -> int: ...
def scratch_bytes(output: Weight, n_rows: int, n_threads: int) -> int: ...
