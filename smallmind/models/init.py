"""Seeded random weights for any config (tests, benchmarks, the seed workload)."""
from __future__ import annotations

import numpy as np

from ..tensors import GGMLType, TensorData
from .config import ModelConfig
from .spec import tensor_specs


def random_tensors(config: ModelConfig, seed: int = 42, std: float = 0.02) -> dict[str, TensorData]:
    """Every required tensor of ``config``'s architecture table (:mod:`.spec`): N(0, std)
    matrices, embeddings and biases; norm weights 1, norm biases 0. Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, required in tensor_specs(config):
        if not required:
            continue
        if "norm" in name:
            value = 1.0 if name.endswith(".weight") else 0.0
            data = np.full(shape, value, dtype=np.float32)
        else:
            data = rng.normal(0.0, std, size=shape).astype(np.float32)
        tensors[name] = TensorData(name, GGMLType.F32, shape, data)
    return tensors
