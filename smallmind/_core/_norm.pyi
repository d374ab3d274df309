"""LayerNorm and RMSNorm over rows, plain or fused with the residual add (compiled: _norm.pyx)."""
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

_F32: TypeAlias = npt.NDArray[np.float32]

def layernorm(x: _F32, weight: _F32, bias: _F32 | None = None, eps: float = 1e-5,
              out: _F32 | None = None) -> _F32: ...
def rmsnorm(x: _F32, weight: _F32, eps: float = 1e-5, out: _F32 | None = None) -> _F32: ...
def residual_layernorm(x: _F32, delta: _F32, weight: _F32, bias: _F32 | None = None,
                       eps: float = 1e-5, out: _F32 | None = None) -> _F32: ...
def residual_rmsnorm(x: _F32, delta: _F32, weight: _F32, eps: float = 1e-5,
                     out: _F32 | None = None) -> _F32: ...
