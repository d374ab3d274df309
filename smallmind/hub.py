"""Model files from the Hugging Face Hub, kept in huggingface_hub's shared cache.

Needs the ``hub`` extra (``pip install 'smallmind[hub]'``). Downloads go where every
Hugging Face library puts them (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``),
so a file fetched once is found again offline (``HF_HUB_OFFLINE=1``) and shared with
llama-cpp-python, transformers and the ``hf`` command.

>>> from smallmind.hub import download
>>> path = download("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "*Q4_1.gguf")  # doctest: +SKIP
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from types import ModuleType

__all__ = ["download"]

_GLOB_CHARS = frozenset("*?[")


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("downloading from the Hugging Face Hub needs huggingface_hub: "
                          "pip install 'smallmind[hub]'") from None
    return huggingface_hub


def download(repo_id: str, filename: str, *, revision: str | None = None,
             cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of ``filename`` from the model repository ``repo_id``, downloaded into the
    Hugging Face cache unless it is there already.

    ``filename`` is a path in the repository or a glob pattern (``"*Q4_1.gguf"``) that must
    match exactly one of its files. ``revision`` is a branch, tag or commit (default: main).
    Raises ``FileNotFoundError`` when nothing matches (the message lists the repository's
    files), ``ValueError`` when a pattern matches several, and huggingface_hub's own
    errors (all ``OSError``) for unknown repositories or a file missing from the cache offline.
    """
    for name, value in (("repo_id", repo_id), ("filename", filename)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    if not filename:
        raise ValueError("filename must not be empty")
    hub = _hub()
    if _GLOB_CHARS & set(filename):
        filename = _match_one(repo_id, filename, _repo_files(hub, repo_id, revision, cache_dir))
    return Path(hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))


def _repo_files(hub: ModuleType, repo_id: str, revision: str | None,
                cache_dir: str | os.PathLike | None) -> list[str]:
    """The repository's file list: from the Hub, or offline from the cached snapshot."""
    from huggingface_hub import errors
    try:
        return list(hub.list_repo_files(repo_id, revision=revision))
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError):
        raise
    except OSError as exc:  # offline mode, or the Hub cannot be reached: what the cache holds
        try:
            snapshot = Path(hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                  local_files_only=True))
        except errors.LocalEntryNotFoundError:
            raise FileNotFoundError(f"{repo_id} is not in the Hugging Face cache, and the Hub cannot "
                                    f"be reached ({exc})") from None
        return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _match_one(repo_id: str, pattern: str, files: list[str]) -> str:
    matches = sorted(fnmatch.filter(files, pattern))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        shown = ", ".join(files[:20]) + (f" and {len(files) - 20} more" if len(files) > 20 else "")
        raise FileNotFoundError(f"no file of {repo_id} matches {pattern!r}; it has: {shown or 'no files'}")
    raise ValueError(f"{pattern!r} matches {len(matches)} files of {repo_id}: {', '.join(matches)}; "
                     "name one of them")
