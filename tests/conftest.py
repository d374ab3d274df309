"""Shared test fixtures.

Real model files live outside the repo: ``$SMALLMIND_MODELS`` (default ``../shared/models``
next to the checkout) and ``~/.cache/smallmind`` for the PyPI downloads
(``python tools/fetch_models.py``). Tests that need one skip with the reason when it is
absent, unless ``SMALLMIND_REQUIRE_MODELS=1`` (CI), where a missing model fails.

Hypothesis: ``HYPOTHESIS_PROFILE=ci`` selects the thorough profile registered below.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE: "default" is quick, for working
# on the code; "ci" runs many more examples per property. No deadline in either: kernel
# timings on a loaded machine say nothing about correctness.
settings.register_profile("default", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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


@pytest.fixture
def r8_panel():
    """Sets the prompt path of repacked products (_matmul._set_r8_panel: True, False or None for
    by size) for the test, then restores it."""
    from smallmind._core import _matmul

    old = _matmul._set_r8_panel(None)
    yield _matmul._set_r8_panel
    _matmul._set_r8_panel(old)


@pytest.fixture
def vnni():
    """Sets the vpdpbusd form of the repacked kernels (_matmul._set_vnni) for the test, then
    restores it."""
    from smallmind._core import _matmul

    old = _matmul._vnni()
    yield _matmul._set_vnni
    _matmul._set_vnni(old)
