#!/usr/bin/env bash
# Issue #11's install-time goal, measured as a user meets it: `pip install .` of a fresh clone
# into a fresh virtual environment (build isolation, so pip also installs setuptools, Cython
# and numpy for the build, then numpy and jinja2 for the package).
#
#   tools/time_install.sh [REV]      # default HEAD; prints wall and CPU (user + sys) seconds
#
# On a busy machine the wall time says little: compare CPU seconds, and read the idle 2-core
# wall time as at least max(CPU / 2, the longest module's compile) plus pip's serial steps.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
rev="${1:-HEAD}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/src"
git -C "$work/src" checkout -q "$rev"
python -m venv "$work/venv"
cd "$work/src"
echo "pip install . of $(git rev-parse --short HEAD) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "pip install .: %e s wall, %U s user + %S s sys CPU" "$work/venv/bin/pip" install -q .
