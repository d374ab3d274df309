"""A pool of 64-byte-aligned float32 buffers, bucketed by power-of-two size (compiled: _pool.pyx)."""
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

ALIGNMENT: Final[int]
MMAP_BYTES: Final[int]

@dataclass(frozen=True)
class PoolStats:
    hits: int
    misses: int
    releases: int
    live_bytes: int
    peak_bytes: int
    pooled_bytes: int
    live_buffers: int
    pooled_buffers: int

class BufferPool:
    def __init__(self, max_pooled_bytes: int | None = None) -> None: ...
    def acquire(self, shape: int | tuple[int, ...], *, zero: bool = False) -> npt.NDArray[np.float32]: ...
    def release(self, arr: npt.NDArray[np.float32]) -> None: ...
    def stats(self) -> PoolStats: ...
    def clear(self) -> None: ...
    def owns(self, arr: object) -> bool: ...

def default_pool() -> BufferPool: ...
