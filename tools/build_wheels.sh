#!/usr/bin/env bash
# Release build: an sdist, a wheel built from that sdist (so the sdist is proven complete),
# the wheel retagged manylinux by auditwheel (which also refuses any external shared
# library it would have to bundle), and twine's metadata check of both.
#
#   tools/build_wheels.sh [OUTDIR]        # default dist/; needs `pip install ".[release]"`
#
# The same build runs on CI for CPython 3.10-3.13 with cibuildwheel ([tool.cibuildwheel]
# in pyproject.toml): `cibuildwheel --platform linux`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT

python -m build --outdir "$raw" .   # the sdist, then the wheel built from it
wheel=$(ls "$raw"/smallmind-*.whl)
echo "== auditwheel show $(basename "$wheel")"
auditwheel show "$wheel"
auditwheel repair --only-plat -w "$raw/repaired" "$wheel"
python - "$raw"/repaired/*.whl <<'PY'
import os, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
bundled = [n for n in names if ".libs/" in n]
assert not bundled, f"auditwheel bundled external libraries: {bundled}"
assert any(n.endswith("/LICENSE") for n in names), "LICENSE is missing from the wheel"
size = os.path.getsize(sys.argv[1])
assert size <= 3_000_000, f"the wheel is {size:,} bytes, over the 3 MB budget"
print(f"{os.path.basename(sys.argv[1])}: {size:,} bytes, no bundled libraries, LICENSE inside")
PY
mkdir -p "$out"
cp "$raw"/smallmind-*.tar.gz "$raw"/repaired/*.whl "$out"/
twine check --strict "$out"/smallmind-*
ls -l "$out"/smallmind-*
