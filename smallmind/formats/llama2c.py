"""llama2.c checkpoints (``run.c``'s ``.bin``): the legacy header and version 1.

Legacy ("version 0") layout, all little-endian::

    7 x int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    float32:   token_emb[vocab, dim]
               rms_att[L, dim]  wq[L, dim, dim]  wk[L, kv_dim, dim]  wv[L, kv_dim, dim]
               wo[L, dim, dim]  rms_ffn[L, dim]  w1[L, hidden, dim]  w2[L, dim, hidden]
               w3[L, hidden, dim]  rms_final[dim]
               freq_cis_real[seq_len * head_size / 2]  freq_cis_imag[same]   (unused)
               wcls[vocab, dim]                      only when vocab_size < 0 (untied)

Version 1 (``export.py --version 1``): a 256-byte header (u32 magic "ak42" =
0x616b3432, i32 version, the same 7 int32 with a positive vocab_size, u8
shared_classifier, zero padding), then float32 rms_att[L, dim], rms_ffn[L, dim],
rms_final[dim], token_emb, wq, wk, wv, wo, w1, w2, w3 (each [L, ...]) and wcls if not
shared. Version 2 (int8 groups) is refused.

The files carry no checksum or tensor table, so the only integrity check is the size:
it must equal exactly what the header implies. Weights come out under GGUF's llama
tensor names as views into a read-only memory map. run.c rotates adjacent (even, odd)
pairs for RoPE with theta 10000 (GGUF's llama layout, no permutation needed) and uses
RMSNorm with eps 1e-5.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, TokenizerError, UnsupportedModelError
from ..models.config import ModelConfig
from ..models.spec import check_tensors
from ..tensors import GGMLType, TensorData
from . import LoadedModel

LLAMA2C_MAGIC = 0x616B3432          # "ak42" read as a little-endian uint32
LEGACY_HEADER_BYTES = 7 * 4
V1_HEADER_BYTES = 256
#: Any dimension past this is a corrupt header rather than a model run.c could run.
_MAX_DIM = 1 << 20
_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


class Llama2cHeader:
    """The seven hyper-parameters plus where the weights start and how they are ordered."""

    def __init__(self, values: tuple[int, ...], *, version: int, shared_classifier: bool,
                 weights_offset: int):
        (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads,
         self.vocab_size, self.seq_len) = values
        self.version = version
        self.shared_classifier = shared_classifier
        self.weights_offset = weights_offset

    def problems(self) -> list[str]:
        """What makes these values impossible; empty when they describe a model."""
        bad = [f"{name}={value} is not in [1, {_MAX_DIM}]"
               for name, value in zip(_FIELDS, (self.dim, self.hidden_dim, self.n_layers,
                                                self.n_heads, self.n_kv_heads, self.vocab_size,
                                                self.seq_len), strict=False)
               if not 1 <= value <= _MAX_DIM]
        if bad:
            return bad
        if self.dim % self.n_heads:
            bad.append(f"dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        elif (self.dim // self.n_heads) % 2:
            bad.append(f"head size {self.dim // self.n_heads} is odd (RoPE rotates pairs)")
        if self.n_heads % self.n_kv_heads:
            bad.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        return bad

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(block name, shape) of every float32 block in file order."""
        L, d, h, v, kv = self.n_layers, self.dim, self.hidden_dim, self.vocab_size, self.kv_dim
        Blocks = list[tuple[str, tuple[int, ...]]]
        mats: Blocks = [("wq", (L, d, d)), ("wk", (L, kv, d)), ("wv", (L, kv, d)), ("wo", (L, d, d))]
        ffn: Blocks = [("w1", (L, h, d)), ("w2", (L, d, h)), ("w3", (L, h, d))]
        blocks: Blocks
        if self.version == 0:
            half = self.seq_len * self.head_size // 2
            blocks = ([("token_emb", (v, d)), ("rms_att", (L, d))] + mats + [("rms_ffn", (L, d))]
                      + ffn + [("rms_final", (d,)), ("freq_cis_real", (half,)),
                               ("freq_cis_imag", (half,))])
        else:
            blocks = ([("rms_att", (L, d)), ("rms_ffn", (L, d)), ("rms_final", (d,)),
                       ("token_emb", (v, d))] + mats + ffn)
        if not self.shared_classifier:
            blocks.append(("wcls", (v, d)))
        return blocks

    def expected_size(self) -> int:
        floats = sum(math.prod(shape) for _, shape in self.layout())
        return self.weights_offset + 4 * floats


def read_header(path: Path, head: bytes) -> Llama2cHeader:
    """Parse either header from the first bytes of the file (no validation of values)."""
    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == LLAMA2C_MAGIC:
        if len(head) < V1_HEADER_BYTES:
            raise ModelFormatError(f"truncated llama2.c header: {len(head)} of {V1_HEADER_BYTES} "
                                   "bytes", path=path, offset=0)
        (version,) = struct.unpack_from("<i", head, 4)
        if version != 1:
            raise UnsupportedModelError(f"llama2.c format version {version} is not supported "
                                        "(only 0 and 1, float32)", path=path, offset=4)
        values = struct.unpack_from("<7i", head, 8)
        shared = head[36]
        if shared > 1:
            raise ModelFormatError(f"shared_classifier flag is {shared}", path=path, offset=36)
        return Llama2cHeader(values, version=1, shared_classifier=bool(shared),
                             weights_offset=V1_HEADER_BYTES)
    if len(head) < LEGACY_HEADER_BYTES:
        raise ModelFormatError(f"file of {len(head)} bytes is too short for a llama2.c header",
                               path=path, offset=0)
    legacy = list(struct.unpack_from("<7i", head, 0))
    # A negative vocab_size is how the legacy format says "a separate classifier follows".
    shared = legacy[5] > 0
    legacy[5] = abs(legacy[5])
    return Llama2cHeader(tuple(legacy), version=0, shared_classifier=shared,
                         weights_offset=LEGACY_HEADER_BYTES)


def looks_like_llama2c(path: Path, head: bytes, file_size: int) -> bool:
    """True when ``head`` is a plausible llama2.c header (magic, or sane values whose
    implied size is exactly ``file_size``)."""
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == LLAMA2C_MAGIC:
        return True
    try:
        header = read_header(path, head)
    except ModelFormatError:
        return False
    return not header.problems() and header.expected_size() == file_size


def _check(header: Llama2cHeader, path: Path, file_size: int) -> None:
    problems = header.problems()
    if problems:
        raise ModelFormatError("impossible llama2.c header: " + "; ".join(problems),
                               path=path, offset=0 if header.version == 0 else 8)
    expected = header.expected_size()
    if file_size != expected:
        raise ModelFormatError(
            f"file is {file_size} bytes but its header (dim={header.dim}, "
            f"hidden_dim={header.hidden_dim}, n_layers={header.n_layers}, "
            f"n_heads={header.n_heads}, n_kv_heads={header.n_kv_heads}, "
            f"vocab_size={header.vocab_size}, seq_len={header.seq_len}, "
            f"{'shared' if header.shared_classifier else 'separate'} classifier) implies "
            f"exactly {expected} bytes", path=path)


def _tensors(header: Llama2cHeader, buf: Any) -> dict[str, TensorData]:
    blocks: dict[str, np.ndarray] = {}
    offset = header.weights_offset
    for name, shape in header.layout():
        count = math.prod(shape)
        blocks[name] = np.frombuffer(buf, np.float32, count, offset).reshape(shape)
        offset += 4 * count

    def tensor(name: str, data: np.ndarray) -> TensorData:
        return TensorData(name, GGMLType.F32, tuple(data.shape), data)

    out = {"token_embd.weight": tensor("token_embd.weight", blocks["token_emb"])}
    per_layer = {"rms_att": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v",
                 "wo": "attn_output", "rms_ffn": "ffn_norm", "w1": "ffn_gate",
                 "w2": "ffn_down", "w3": "ffn_up"}
    for layer in range(header.n_layers):
        for block, gguf_name in per_layer.items():
            name = f"blk.{layer}.{gguf_name}.weight"
            out[name] = tensor(name, blocks[block][layer])
    out["output_norm.weight"] = tensor("output_norm.weight", blocks["rms_final"])
    if not header.shared_classifier:
        out["output.weight"] = tensor("output.weight", blocks["wcls"])
    return out


def load_llama2c_tokenizer(path: Path):
    """A llama2.c ``tokenizer.bin`` through the tokenizer package's reader."""
    try:
        from ..tokenizers.llama2c import Llama2cTokenizer
    except ImportError:
        raise TokenizerError(f"{path}: llama2.c tokenizer support is not available") from None
    return Llama2cTokenizer.from_file(path)


def _find_tokenizer(model_path: Path, vocab_size: int, explicit: Any):
    from ..tokenizers.base import Tokenizer
    if isinstance(explicit, Tokenizer):
        tok = explicit
    elif explicit is not None:
        tok = load_llama2c_tokenizer(Path(explicit))
    else:
        # run.c's convention: tokenizer.bin beside the model; the tinyllamas models with a
        # custom vocabulary ship it as tok{vocab}.bin.
        beside: Tokenizer | None = None
        for candidate in (f"tok{vocab_size}.bin", "tokenizer.bin"):
            path = model_path.with_name(candidate)
            if path.is_file():
                try:
                    from ..tokenizers.llama2c import Llama2cTokenizer  # noqa: F401
                except ImportError:
                    return None
                found = load_llama2c_tokenizer(path)
                if found.vocab_size == vocab_size:
                    beside = found
                    break
        return beside
    if tok.vocab_size != vocab_size:
        raise TokenizerError(f"tokenizer has {tok.vocab_size} tokens but {model_path} has a "
                             f"vocabulary of {vocab_size}")
    return tok


def load_llama2c(path: str | os.PathLike, *, tokenizer: Any = None,
                 n_ctx: int | None = None) -> LoadedModel:
    """Load a llama2.c checkpoint; tensors are views into a read-only memory map.

    ``tokenizer``: a :class:`Tokenizer` or the path of a ``tokenizer.bin``; by default
    ``tok{vocab}.bin`` or ``tokenizer.bin`` next to the model, if one matches its
    vocabulary. ``n_ctx`` defaults to the header's seq_len (RoPE has no hard limit, but
    the model was trained on that many positions).
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(V1_HEADER_BYTES)
    header = read_header(path, head)
    _check(header, path, file_size)
    with open(path, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    tensors = _tensors(header, mapping)

    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0):
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    config = ModelConfig(
        arch="llama", vocab_size=header.vocab_size, n_ctx=n_ctx or header.seq_len,
        n_embd=header.dim, n_layer=header.n_layers, n_head=header.n_heads,
        n_kv_head=header.n_kv_heads, n_hidden=header.hidden_dim, norm_eps=1e-5, bias=False,
        tie_embeddings=header.shared_classifier, rope_theta=10000.0, rope_neox=False,
        n_ctx_train=header.seq_len, rope_dim=header.head_size,
        extra={"llama2c_version": header.version},
    )
    check_tensors(config, tensors, path=path)  # the block-name mapping above against the llama table
    tok = _find_tokenizer(path, header.vocab_size, tokenizer)
    return LoadedModel(config=config, tensors=tensors, tokenizer=tok, path=path,
                       format="llama2c", metadata={})
