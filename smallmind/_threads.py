"""How many threads a forward pass uses: decided here, once, for every entry point.

``Engine.load/default/from_config``, ``Session`` (and its per-call override) and the CLI
all call :func:`resolve_threads`, so one rule holds everywhere: ``None`` means the
measured default for the model, anything else must be an integer in
``[1, MAX_THREADS]`` (never silently clamped).
"""
from __future__ import annotations

import os
from numbers import Integral

from .models.config import ModelConfig

#: The thread pool runs the caller plus at most 63 workers (``SMP_MAX_WORKERS``).
MAX_THREADS = 64


def default_threads(config: ModelConfig | None) -> int:
    """Threads that decode fastest: one for tiny models (threads only add overhead there),
    up to four cores for models with large matrices (measured in benchmarks/compare.py)."""
    if config is None:
        return 1
    big = config.n_embd * config.n_hidden >= 256 * 1024
    return min(os.cpu_count() or 1, 4) if big else 1


def check_threads(n_threads: object, name: str = "n_threads") -> int:
    """``n_threads`` as an int in [1, MAX_THREADS]; TypeError / ValueError naming ``name``."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, Integral):
        raise TypeError(f"{name} must be an integer or None, got {n_threads!r}")
    value = int(n_threads)
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{name} must be in [1, {MAX_THREADS}], got {value}")
    return value


def resolve_threads(requested: object, config: ModelConfig | None = None) -> int:
    """The thread count to use: ``requested`` checked strictly, or the default for ``config``
    when ``requested`` is None."""
    if requested is None:
        return default_threads(config)
    return check_threads(requested)
