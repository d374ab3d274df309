"""Shared test fixtures.

Real model files live outside the repo: ``$SMALLMIND_MODELS`` (default ``../shared/models``
next to the checkout) and ``~/.cache/smallmind`` for the PyPI downloads
(``python tools/fetch_models.py``). Tests that need one skip with the reason when it is
absent, unless ``SMALLMIND_REQUIRE_MODELS=1`` (CI), where a missing model fails.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    return Path(os.environ.get("SMALLMIND_MODELS", REPO.parent / "shared" / "models"))


def cache_dir() -> Path:
    return Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))


def _missing(path: Path, how: str) -> None:
    message = f"model file {path} is missing ({how})"
    if os.environ.get("SMALLMIND_REQUIRE_MODELS") == "1":
        pytest.fail(message + " and SMALLMIND_REQUIRE_MODELS=1")
    pytest.skip(message)


def shared_model(relpath: str) -> Path:
    """A file under the shared models folder, e.g. ``stories260K/stories260K.bin``."""
    path = models_dir() / relpath
    if not path.exists():
        _missing(path, "set SMALLMIND_MODELS to the shared models folder")
    return path


def cached_model(name: str) -> Path:
    """A downloaded model in the cache, e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    path = cache_dir() / name
    if not path.exists():
        _missing(path, "run `python tools/fetch_models.py` to download it")
    return path
