"""Quantise float arrays into GGML block formats (for writing GGUF files).

Only what smallmind's own tools write: Q8_0, rounding exactly as ggml's reference
quantiser does, so files made here match ones made by llama.cpp's tools bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..tensors import GGMLType, TensorData


def quantize_q8_0(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` (last dimension a multiple of 32) as Q8_0 blocks: uint8 (rows, row_bytes).

    Each block of 32 values stores d = max|x| / 127 as float16, then round(x / d) as int8,
    rounding halves away from zero (C's roundf), as ggml's quantize_row_q8_0_ref does.
    """
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] % 32:
        raise ValueError(f"Q8_0 needs a 2-D array whose rows are a multiple of 32 long, got {a.shape}")
    rows, cols = a.shape
    blocks = a.reshape(rows, cols // 32, 32)
    d = np.abs(blocks).max(axis=-1) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inv[..., None]
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)
    out = np.empty((rows, cols // 32, 34), dtype=np.uint8)
    out[..., :2] = d.astype(np.float16).view(np.uint8).reshape(rows, cols // 32, 2)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(rows, cols // 32 * 34)


def q8_0_tensor(name: str, a: np.ndarray) -> TensorData:
    data = quantize_q8_0(a)
    return TensorData(name, GGMLType.Q8_0, tuple(a.shape), data)
