"""smallmind: fast CPU inference for small decoder-only transformer language models.

>>> from smallmind import Engine
>>> engine = Engine.default()
>>> print(engine.generate("ROMEO:", max_new_tokens=64).text)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._cpu import check_cpu as _check_cpu

_check_cpu()  # before any AVX2-compiled module is imported: a clear ImportError, never SIGILL

from . import errors  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Engine", "Session", "SamplingParams", "GenerationResult", "TokenChunk", "TokenStream",
           "Timings", "ModelConfig", "profile", "errors", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .models.config import ModelConfig
    from .profiler import profile
    from .results import GenerationResult, Timings, TokenChunk, TokenStream
    from .sampling import SamplingParams
    from .session import Session

# The public names load on first use, so `import smallmind.errors` or the CLI's --help
# stay quick and a kernel module is only loaded when something needs it.
_LAZY = {
    "Engine": "engine", "Session": "session", "SamplingParams": "sampling",
    "GenerationResult": "results", "TokenChunk": "results", "TokenStream": "results",
    "Timings": "results", "ModelConfig": "models.config",
    "profile": "profiler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smallmind' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
