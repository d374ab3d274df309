#!/usr/bin/env python
"""Convert a llama2.c checkpoint and its tokenizer.bin to a GGUF file llama.cpp can run.

    python tools/llama2c_to_gguf.py stories260K.bin stories260K.gguf --tokenizer tok512.bin

The result is a ``llama``-architecture GGUF with F32 tensors and a SentencePiece
("llama") vocabulary: token strings from tokenizer.bin with spaces spelled "▁" again
(llama2.c's exporter turned them into real spaces), ids 0/1/2 as <unk>/<s>/</s>,
``<0xXX>`` pieces marked as byte tokens, scores copied. No weight permutation is
needed: run.c rotates adjacent (even, odd) pairs, which is what llama.cpp expects of
the llama architecture's Q and K.
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from smallmind.errors import TokenizerError  # noqa: E402
from smallmind.formats.gguf import GGUFValueType  # noqa: E402
from smallmind.formats.gguf_writer import GGUFValue, llama_metadata, write_gguf  # noqa: E402
from smallmind.formats.llama2c import load_llama2c  # noqa: E402

# llama.cpp's llama_token_type values
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def read_llama2c_vocab(path: Path, vocab_size: int) -> tuple[list[bytes], list[float]]:
    """Pieces and scores of a llama2.c tokenizer.bin: i32 max_token_length, then per
    token f32 score, i32 length, bytes."""
    raw = Path(path).read_bytes()
    pos = 4
    if len(raw) < 4:
        raise TokenizerError(f"{path}: too short for a llama2.c tokenizer")
    pieces, scores = [], []
    for i in range(vocab_size):
        if pos + 8 > len(raw):
            raise TokenizerError(f"{path}: ends after {i} of {vocab_size} tokens")
        score, length = struct.unpack_from("<fi", raw, pos)
        pos += 8
        if length < 0 or pos + length > len(raw):
            raise TokenizerError(f"{path}: token {i} has a bad length {length}")
        pieces.append(raw[pos:pos + length])
        scores.append(score)
        pos += length
    if pos != len(raw):
        raise TokenizerError(f"{path}: {len(raw) - pos} bytes left after {vocab_size} tokens "
                             "(vocabulary size mismatch?)")
    return pieces, scores


def spm_vocab(pieces: list[bytes]) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for a SentencePiece vocabulary."""
    tokens, types = [], []
    for i, piece in enumerate(pieces):
        text = piece.decode("utf-8", errors="surrogateescape")
        if i == UNK_ID:
            text, kind = "<unk>", TOKEN_UNKNOWN
        elif i == BOS_ID:
            text, kind = "<s>", TOKEN_CONTROL
        elif i == EOS_ID:
            text, kind = "</s>", TOKEN_CONTROL
        elif not text:
            kind = TOKEN_CONTROL
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kind = TOKEN_BYTE
        else:
            text, kind = text.replace(" ", "\u2581"), TOKEN_NORMAL
        tokens.append(text)
        types.append(kind)
    return tokens, types


def convert(model_path: Path, out_path: Path, tokenizer_path: Path | None = None,
            name: str | None = None) -> Path:
    loaded = load_llama2c(model_path, tokenizer=None)
    config = loaded.config
    if tokenizer_path is None:
        for candidate in (f"tok{config.vocab_size}.bin", "tokenizer.bin"):
            if model_path.with_name(candidate).is_file():
                tokenizer_path = model_path.with_name(candidate)
                break
        else:
            raise SystemExit(f"no tokenizer found next to {model_path}; pass --tokenizer")
    pieces, scores = read_llama2c_vocab(tokenizer_path, config.vocab_size)
    tokens, types = spm_vocab(pieces)

    metadata = llama_metadata(config, name=name or model_path.stem)
    metadata.update({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": GGUFValue(scores, GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": UNK_ID,
        "tokenizer.ggml.bos_token_id": BOS_ID,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,
    })
    # Global tensors first, then each block, the order llama.cpp's converters use.
    names = ["token_embd.weight", "output_norm.weight"]
    if "output.weight" in loaded.tensors:
        names.append("output.weight")
    names += [n for n in loaded.tensors if n.startswith("blk.")]
    tensors = {n: loaded.tensors[n].data for n in names}
    return write_gguf(out_path, "llama", metadata, tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="llama2.c .bin checkpoint")
    parser.add_argument("output", type=Path, help="GGUF file to write")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="llama2.c tokenizer.bin (default: tok{vocab}.bin or tokenizer.bin "
                             "next to the model)")
    parser.add_argument("--name", default=None, help="general.name (default: the file stem)")
    args = parser.parse_args(argv)
    out = convert(args.model, args.output, args.tokenizer, args.name)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
