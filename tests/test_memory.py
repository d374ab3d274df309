"""Resident memory of a loaded model: weights are used in place from the memory map."""
from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import cached_model

from smallmind.formats.gguf import read_gguf
from smallmind.tokenizers import from_gguf_metadata

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


@pytest.mark.parametrize("name", [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    # Gemma 3: the 178 MB tied embedding and the Q5_0 matrices repacked, Q4_K/Q6_K read from
    # the file; a 262k-token vocabulary
    pytest.param("gemma-3-270m-q4_k_m.gguf", marks=pytest.mark.slow),
])
def test_resident_set_after_loading_is_file_size_plus_60mb(name):
    model = cached_model(name)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(model)], capture_output=True,
                         text=True, cwd=REPO, check=True)
    grown = int(out.stdout.split()[-1])
    # Every weight page is touched by one forward pass, so the whole file is resident;
    # what may come on top is the tokenizer, the workspace and the touched KV cache.
    assert grown <= model.stat().st_size + 60 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"


@pytest.mark.slow
def test_gemma3_vocabulary_heap_stays_compact():
    # A 262k-token SentencePiece vocabulary: the Python heap of the parsed metadata and the
    # tokenizer built from it, traced (deterministic, unlike RSS). The token strings (19 MiB,
    # most of them UCS-2 because of "▁") and the piece -> id dict with its int ids (15 MiB)
    # are the floor; a list of 262k Python floats, bytes objects or a second dict of pieces
    # would each push it over the bound (it was 71 MiB).
    model = cached_model("gemma-3-270m-q4_k_m.gguf")
    tracemalloc.start()
    try:
        gguf = read_gguf(model)
        tokenizer = from_gguf_metadata(gguf.metadata)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tokenizer.encode("Hello world") and tokenizer.vocab_size == 262144
    assert held <= 48 * 2**20, f"metadata + tokenizer hold {held / 2**20:.1f} MiB"
