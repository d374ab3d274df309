"""Serving: an OpenAI-compatible HTTP server with continuous batching (the ``server`` extra).

>>> from smallmind import Engine
>>> from smallmind.serve import create_app
>>> app = create_app(Engine.default(), parallel=4)   # an ASGI app: uvicorn.run(app)

``python -m smallmind serve`` runs it on uvicorn; ``smallmind.serve.ray`` runs it on Ray Serve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Scheduler", "add_serve_command", "create_app"]

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app
    from .cli import add_serve_command
    from .scheduler import Scheduler

_LAZY = {"create_app": "app", "Scheduler": "scheduler", "add_serve_command": "cli"}


def __getattr__(name: str) -> Any:
    # Lazy, so that the CLI can register `serve` without importing FastAPI.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smallmind.serve' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
