"""Refuse, with a clear ImportError, to load kernels on a CPU that cannot run them.

The extensions are compiled with ``-mavx2 -mfma -mf16c``; importing one on a CPU
without those instructions would die with SIGILL ("Illegal instruction") at the
first vector instruction. This module only uses numpy's run-time CPU feature table,
so it is safe to import anywhere, and must be imported before any ``_core`` module.
"""
from __future__ import annotations

from .errors import CPUFeatureError

REQUIRED = ("AVX2", "FMA3", "F16C")


def cpu_features() -> dict[str, bool]:
    import importlib
    try:  # numpy >= 2
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # numpy 1.x
        umath = importlib.import_module("numpy.core._multiarray_umath")
    return dict(umath.__cpu_features__)


def missing_features(features: dict[str, bool] | None = None) -> list[str]:
    features = cpu_features() if features is None else features
    return [name for name in REQUIRED if not features.get(name, False)]


def check_cpu(features: dict[str, bool] | None = None) -> None:
    missing = missing_features(features)
    if missing:
        raise CPUFeatureError(
            "smallmind's compiled kernels need a CPU with AVX2, FMA and F16C "
            f"(x86-64-v3, Intel Haswell / AMD Zen or newer); this CPU lacks {', '.join(missing)}"
        )
