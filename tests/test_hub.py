"""Engine.from_pretrained / `smallmind pull` against a Hugging Face cache laid out as huggingface_hub
lays it out, offline (HF_HUB_OFFLINE=1): the real library resolves refs, snapshots and blobs."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smallmind import ModelConfig
from smallmind.formats.gguf_writer import gpt2_metadata, write_gguf
from smallmind.models.init import random_tensors

pytest.importorskip("huggingface_hub")  # the `hub` extra, part of the `test` extra

REPO = Path(__file__).resolve().parent.parent
COMMIT = "4c2f6b0e3d1a5f7e9b8c0d2e4f6a8b0c1d3e5f70"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """models--smallmind-test--tiny-gguf: refs/main -> COMMIT; snapshots/COMMIT/<file> are
    relative symlinks into blobs/<sha256>, as huggingface_hub writes them."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    model = tmp_path_factory.mktemp("src") / "tiny.gguf"
    config = ModelConfig.seed_small()
    write_gguf(model, "gpt2", gpt2_metadata(config),
               {name: t.data for name, t in random_tensors(config, seed=7).items()})
    repo = cache / "models--smallmind-test--tiny-gguf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / COMMIT
    (snapshot / "sub").mkdir(parents=True)
    files = {"tiny-F32.gguf": model.read_bytes(), "sub/tiny-copy.gguf": model.read_bytes(),
             "README.md": b"# tiny\n"}
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        link = snapshot / name
        link.symlink_to(os.path.relpath(repo / "blobs" / digest, link.parent))
    return cache


def _run(hub_cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache), HF_HOME=str(hub_cache.parent / "home"),
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env,
                          cwd=hub_cache.parent, timeout=120)


def test_pull_finds_a_file_by_pattern_in_the_cache(hub_cache):
    out = _run(hub_cache, "-m", "smallmind", "pull", "smallmind-test/tiny-gguf", "*F32.gguf")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path == hub_cache / "models--smallmind-test--tiny-gguf" / "snapshots" / COMMIT / "tiny-F32.gguf"
    assert path.resolve().parent.name == "blobs"


def test_from_pretrained_loads_and_generates_offline(hub_cache):
    code = ("from smallmind import Engine\n"
            "e = Engine.from_pretrained('smallmind-test/tiny-gguf', 'sub/tiny-copy.gguf', n_threads=1)\n"
            "r = e.generate('Hi', max_new_tokens=5, seed=0)\n"
            "print(e.source); print(len(r.tokens))\n")
    out = _run(hub_cache, "-c", code)
    assert out.returncode == 0, out.stderr
    source, n = out.stdout.split()
    assert source.endswith(f"snapshots/{COMMIT}/sub/tiny-copy.gguf") and n == "5"


@pytest.mark.parametrize("args, message", [
    (("smallmind-test/tiny-gguf", "*.gguf"), "'*.gguf' matches 2 files of smallmind-test/tiny-gguf"),
    (("smallmind-test/tiny-gguf", "*Q4_1.gguf"), "no file of smallmind-test/tiny-gguf matches '*Q4_1.gguf'"),
    (("smallmind-test/tiny-gguf", "missing.gguf"), "smallmind: error: "),
    (("smallmind-test/not-cached", "*.gguf"), "smallmind: error: "),
])
def test_pull_errors_are_one_line(hub_cache, args, message):
    out = _run(hub_cache, "-m", "smallmind", "pull", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
