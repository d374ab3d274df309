"""Fuzz the loaders and a short generation with seeded mutations of real model files.

Every mutated file is loaded with ``Engine.load`` and, when that works, asked for a few
tokens. The only acceptable outcomes are success or a ``SmallMindError`` subclass; any
other exception, a crash of the process (segfault, abort), a hang, or an allocation past
the worker's memory limit is a finding.

One child worker process handles the files in a loop (a process per file would spend its
time importing numpy); the parent sends it one job at a time, waits for its verdict with a
timeout, and starts a new worker if one dies or hangs.

    python tools/fuzz.py --files 20000 --seed 1          # report on stdout, JSON with --json
    python tools/fuzz.py --files 300 --keep-findings /tmp/findings

Seeds: the embedded default model (GGUF, GPT-2, byte tokenizer), stories260K converted to
GGUF (Llama, SentencePiece tokenizer in metadata), and stories260K's llama2.c ``.bin`` with
its ``tok512.bin`` (either file mutated).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Each job may take this long (load + a few tokens of a ~1 MB model take milliseconds).
JOB_TIMEOUT_S = 20.0
#: The worker's address-space limit: a "huge allocation" shows up as MemoryError.
WORKER_MEMORY_BYTES = 3 << 30

_INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 4095, 65535, 65536, 2**31 - 1, 2**31,
                     2**32 - 1, 2**40, 2**63 - 1, 2**63, 2**64 - 1]
_INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3e38, -3e38, float("inf"), float("-inf"),
                       float("nan"), 1e-45]

_WORKER = r"""
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
import numpy as np
from smallmind import Engine
from smallmind.errors import SmallMindError
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    engine = None
    try:
        kw = {"tokenizer": job["tokenizer"]} if job.get("tokenizer") else {}
        engine = Engine.load(job["path"], n_threads=1, **kw)
        r = engine.generate("Once upon a time", max_new_tokens=3, temperature=0.0)
        ids = [i % engine.config.vocab_size for i in (1, 2, 3)]
        engine.generate(ids, max_new_tokens=2, temperature=1.0, seed=job["seed"])
        verdict = "ok"
    except SmallMindError as exc:
        verdict = "error:" + type(exc).__name__
    except BaseException as exc:
        verdict = "BAD:" + type(exc).__name__ + ": " + str(exc)[:300]
    del engine
    print(json.dumps({"id": job["id"], "verdict": verdict}), flush=True)
"""


@dataclass
class Seed:
    name: str
    files: dict[str, bytes]          # file name -> contents (the model is the first)
    model: str
    tokenizer: str | None = None     # passed as tokenizer= (file name), if any


@dataclass
class Report:
    files: int = 0
    loaded: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return len(self.findings)


def make_seeds(workdir: Path) -> list[Seed]:
    """The seed files, built from the repository's embedded model and the shared stories260K."""
    seeds = [Seed("default-gguf", {"m.gguf": (REPO / "smallmind" / "data" / "default.gguf").read_bytes()},
                  "m.gguf")]
    models = Path(os.environ.get("SMALLMIND_MODELS", REPO.parent / "shared" / "models"))
    stories = models / "stories260K"
    if (stories / "stories260K.bin").is_file() and (stories / "tok512.bin").is_file():
        sys.path.insert(0, str(REPO / "tools"))
        from llama2c_to_gguf import convert
        out = workdir / "stories260K.gguf"
        convert(stories / "stories260K.bin", out, stories / "tok512.bin")
        seeds.append(Seed("stories-gguf", {"m.gguf": out.read_bytes()}, "m.gguf"))
        seeds.append(Seed("stories-llama2c", {"m.bin": (stories / "stories260K.bin").read_bytes(),
                                              "tok512.bin": (stories / "tok512.bin").read_bytes()},
                          "m.bin"))
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four seeded mutations, most of them in the header (where the structure is)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        n = len(buf)
        if n == 0:
            buf += bytes(rng.randrange(256) for _ in range(8))
            continue
        head = min(n, rng.choice((64, 512, 4096, 65536)))
        pos = rng.randrange(head) if rng.random() < 0.85 else rng.randrange(n)
        kind = rng.randrange(9)
        if kind == 0:      # flip a bit
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:    # an interesting byte
            buf[pos] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif kind == 2:    # an interesting integer, 4 or 8 bytes
            value = rng.choice(_INTERESTING_INTS)
            width = rng.choice((4, 8))
            raw = (value % (1 << (8 * width))).to_bytes(width, "little")
            buf[pos:pos + width] = raw
        elif kind == 3:    # an interesting float32 (hyper-parameters, weights)
            buf[pos:pos + 4] = struct.pack("<f", rng.choice(_INTERESTING_FLOATS))
        elif kind == 4:    # truncate
            del buf[rng.randrange(n):]
        elif kind == 5:    # delete a chunk
            del buf[pos:pos + rng.choice((1, 4, 8, 64))]
        elif kind == 6:    # duplicate a chunk
            buf[pos:pos] = buf[pos:pos + rng.choice((1, 4, 8, 64))]
        elif kind == 7:    # small arithmetic on a u32
            (v,) = struct.unpack_from("<I", buf.ljust(pos + 4, b"\0"), pos)
            buf[pos:pos + 4] = struct.pack("<I", (v + rng.choice((-2, -1, 1, 2, 32))) % 2**32)
        else:              # a float32 weight deep in the data becomes huge or non-finite
            pos = rng.randrange(n) & ~3
            buf[pos:pos + 4] = struct.pack("<f", rng.choice((3e38, -3e38, float("inf"), float("nan"))))
    return bytes(buf)


class Worker:
    def __init__(self, memory_bytes: int = WORKER_MEMORY_BYTES):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(memory_bytes)], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        if self._readline(120.0) != "ready":
            raise RuntimeError("fuzz worker failed to start")

    def _readline(self, timeout: float) -> str | None:
        import selectors
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
        finally:
            sel.close()
        line = self.proc.stdout.readline()
        return line.strip() if line else ""

    def run(self, job: dict, timeout: float) -> str:
        """The verdict, or "HANG" / "CRASH:<returncode>" (the worker is then dead)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return f"CRASH:{self.proc.wait()}"
        line = self._readline(timeout)
        if line is None:
            self.close()
            return "HANG"
        if not line:
            return f"CRASH:{self.proc.wait()}"
        return json.loads(line)["verdict"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


def fuzz(n_files: int, seed: int = 0, *, timeout: float = JOB_TIMEOUT_S,
         keep_findings: Path | None = None, progress: bool = False) -> Report:
    """Run ``n_files`` mutated files through one worker; return the tally."""
    rng = random.Random(seed)
    report = Report()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smallmind-fuzz-") as tmp:
        tmpdir = Path(tmp)
        seeds = make_seeds(tmpdir)
        worker = Worker()
        try:
            for index in range(n_files):
                s = seeds[index % len(seeds)]
                target = rng.choice(list(s.files))
                job_dir = tmpdir / f"job{index}"
                job_dir.mkdir()
                for name, data in s.files.items():
                    (job_dir / name).write_bytes(mutate(data, rng) if name == target else data)
                job = {"id": index, "path": str(job_dir / s.model), "seed": index,
                       "tokenizer": str(job_dir / s.tokenizer) if s.tokenizer else None}
                if not worker.alive():
                    worker = Worker()
                verdict = worker.run(job, timeout)
                report.files += 1
                report.loaded += verdict == "ok"
                key = verdict.split(":")[0] if verdict.startswith(("BAD", "CRASH")) else verdict
                report.outcomes[key] = report.outcomes.get(key, 0) + 1
                if verdict.startswith(("BAD", "CRASH", "HANG")):
                    finding = {"file": index, "seed": s.name, "mutated": target, "verdict": verdict}
                    report.findings.append(finding)
                    if keep_findings is not None:
                        keep_findings.mkdir(parents=True, exist_ok=True)
                        shutil.copytree(job_dir, keep_findings / f"job{index}", dirs_exist_ok=True)
                    if not worker.alive():
                        worker = Worker()
                shutil.rmtree(job_dir, ignore_errors=True)
                if progress and (index + 1) % 500 == 0:
                    print(f"{index + 1} files, {report.bad} findings, "
                          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        finally:
            worker.close()
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000, help="mutated files to try")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    ap.add_argument("--timeout", type=float, default=JOB_TIMEOUT_S, help="seconds per file")
    ap.add_argument("--keep-findings", type=Path, help="copy the files of each finding here")
    ap.add_argument("--json", type=Path, help="write the report here as JSON")
    args = ap.parse_args(argv)
    report = fuzz(args.files, args.seed, timeout=args.timeout, keep_findings=args.keep_findings,
                  progress=True)
    summary = {"files": report.files, "loaded_and_generated": report.loaded,
               "outcomes": dict(sorted(report.outcomes.items())), "findings": report.findings,
               "seconds": round(report.seconds, 1), "command": " ".join(sys.argv)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    print(f"{report.files} files in {report.seconds:.0f} s: {report.loaded} loaded and generated, "
          f"{report.bad} findings (crash / hang / non-SmallMindError)")
    for name, count in sorted(report.outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {count:7d}  {name}")
    for f in report.findings[:20]:
        print("  finding:", f)
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
