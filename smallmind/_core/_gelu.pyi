"""GELU activations and GeGLU (compiled: _gelu.pyx)."""
from typing import Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from smallmind._core._elementwise import _set_simd as _set_simd
from smallmind._core._elementwise import _simd as _simd

_F32: TypeAlias = npt.NDArray[np.float32]

FAST_MAX_ABS_ERROR: Final[float]

def gelu(x: _F32, out: _F32 | None = None,
         approximate: Literal["tanh", "none", "fast"] = "tanh") -> _F32: ...
def geglu(gate: _F32, up: _F32, out: _F32 | None = None) -> _F32: ...
