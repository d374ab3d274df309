"""Resident memory of a loaded model: weights are used in place from the memory map."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import cached_model

REPO = Path(__file__).resolve().parent.parent

_SCRIPT = r"""
import sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
import numpy, smallmind
from smallmind import Engine
import smallmind._core._matmul, smallmind.models._layer, smallmind._core._sampling
before = rss()
engine = Engine.load(sys.argv[1], n_threads=1)
engine.generate("The capital of France is", max_new_tokens=8, temperature=0)
print(rss() - before)
"""


def test_resident_set_after_loading_smollm2_is_file_size_plus_60mb():
    model = cached_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(model)], capture_output=True,
                         text=True, cwd=REPO, check=True)
    grown = int(out.stdout.split()[-1])
    # Every weight page is touched by one forward pass, so the whole file is resident;
    # what may come on top is the tokenizer, the workspace and the touched KV cache.
    assert grown <= model.stat().st_size + 60 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
