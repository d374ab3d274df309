"""What loaders hand to models: named raw tensors tagged with their GGML storage type.

Loaders know nothing about kernels; models turn these into kernel weights.
Shapes follow numpy order (rows, cols): for a linear layer ``(out_features, in_features)``.
``data`` is the raw storage: a float32/float16 array for float types, a flat uint8 (or
uint16 for BF16) array of blocks for quantized types, usually a view into a memory map.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    BF16 = 30


#: (elements per block, bytes per block) of every type smallmind may meet in a file.
BLOCK_LAYOUT: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
}


def row_nbytes(ggml_type: GGMLType, n_cols: int) -> int:
    """Bytes one row of ``n_cols`` elements takes; ``n_cols`` must be a whole number of blocks."""
    block, nbytes = BLOCK_LAYOUT[ggml_type]
    if n_cols % block:
        raise ValueError(f"{ggml_type.name} rows need a multiple of {block} elements, got {n_cols}")
    return n_cols // block * nbytes


@dataclass(frozen=True)
class TensorData:
    name: str
    type: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def read_only_file_map(data: Any) -> mmap.mmap | None:
    """The file map (``mmap.mmap``) that ``data`` (an array, or a memoryview) is a read-only
    view of, or None: not a map's view, or a writeable one (a private, copy-on-write map,
    whose written pages dropping them would lose). The pages of a read-only map (ACCESS_READ:
    MAP_SHARED, PROT_READ) can be unmapped at any time and fault back in from the file."""
    base = data
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if isinstance(data, memoryview):
        writeable = not data.readonly
    else:  # an array's own flag (anything else: assumed writeable, so never dropped)
        writeable = getattr(getattr(data, "flags", None), "writeable", True)
    return base if isinstance(base, mmap.mmap) and not writeable else None
