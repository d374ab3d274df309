"""Tokenizer throughput on English text (tinyshakespeare, 1.1 MB).

    python benchmarks/bench_tokenizers.py [--json PATH] [--text PATH]

For each tokenizer: load time, then ``encode`` of the whole text on a fresh tokenizer
("cold": every word merged for the first time), again ("warm": words come from the
cache), and ``decode``. Rates are MB of UTF-8 input per second of thread CPU time (on a
shared machine wall time mostly measures the neighbours); wall-clock rates are stored
in the JSON too. Prints a markdown table and writes JSON (default
benchmarks/results/tokenizers.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smallmind.formats.gguf import read_gguf  # noqa: E402
from smallmind.tokenizers import Llama2cTokenizer, from_gguf_metadata  # noqa: E402

MODELS = Path(os.environ.get("SMALLMIND_MODELS", REPO.parent / "shared" / "models"))
CACHE = Path(os.environ.get("SMALLMIND_CACHE", Path.home() / ".cache" / "smallmind"))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.thread_time()
    result = fn()
    return result, time.thread_time() - cpu, time.perf_counter() - wall


def loaders():
    return {
        "SmolLM2 (BPE, pre=smollm)": (CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf",
                                      lambda p: from_gguf_metadata(read_gguf(p).metadata)),
        "Gemma 3 (SPM, 262k)": (CACHE / "gemma-3-270m-q4_k_m.gguf",
                                lambda p: from_gguf_metadata(read_gguf(p).metadata)),
        "llama2.c tok512": (MODELS / "stories260K" / "tok512.bin", Llama2cTokenizer.from_file),
        "llama2.c Llama 2 32k": (MODELS / "llama2-tokenizer-32k" / "tokenizer.bin",
                                 Llama2cTokenizer.from_file),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "tokenizers.json"))
    parser.add_argument("--text", default=str(MODELS / "tinyshakespeare" / "input.txt"))
    args = parser.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    rows = []
    for name, (path, load) in loaders().items():
        if not path.exists():
            print(f"skipping {name}: {path} is missing", file=sys.stderr)
            continue
        tok, load_cpu, load_wall = _timed(lambda: load(path))
        ids, cold_cpu, cold_wall = _timed(lambda: tok.encode(text))
        _, warm_cpu, warm_wall = _timed(lambda: tok.encode(text))
        out, dec_cpu, dec_wall = _timed(lambda: tok.decode(ids))
        rows.append({"tokenizer": name, "load_s": load_cpu, "ids": len(ids),
                     "encode_cold_mb_s": mb / cold_cpu, "encode_warm_mb_s": mb / warm_cpu,
                     "decode_mb_s": mb / dec_cpu, "round_trip": out == text,
                     "wall": {"load_s": load_wall, "encode_cold_mb_s": mb / cold_wall,
                              "encode_warm_mb_s": mb / warm_wall, "decode_mb_s": mb / dec_wall}})
    print(f"\n{mb:.2f} MB of text, rates per CPU second\n")
    print("| tokenizer | load (s) | ids | encode cold (MB/s) | encode warm (MB/s) "
          "| decode (MB/s) | round trip |")
    print("|---|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['load_s']:.2f} | {r['ids']} | {r['encode_cold_mb_s']:.2f} "
              f"| {r['encode_warm_mb_s']:.2f} | {r['decode_mb_s']:.2f} "
              f"| {'yes' if r['round_trip'] else 'NO'} |")
    target = Path(args.json)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"text": args.text, "mb": mb, "python": platform.python_version(),
                                  "machine": platform.machine(), "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
