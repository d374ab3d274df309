"""Write GGUF (version 3) files: typed metadata plus F32/F16/BF16 or raw quantised tensors.

Types are inferred the way llama.cpp's own converters write them, because llama.cpp
checks a key's type exactly when it reads it ("key has wrong type"): a Python ``int``
becomes UINT32 (INT32 if negative, 64-bit if it does not fit), ``float`` FLOAT32,
``bool`` BOOL, ``str`` STRING; a list of ints becomes an INT32 array (``token_type``,
per-layer widths), of floats FLOAT32, of strings STRING. Numpy scalars and arrays keep
their dtype. Anything else, or an empty list whose element type cannot be guessed,
needs an explicit :class:`GGUFValue`.

Byte-level GPT-2 tokenizer in llama.cpp (what :func:`gpt2_metadata` writes):

* ``tokenizer.ggml.model = "gpt2"`` selects llama.cpp's BPE vocabulary, which needs
  ``tokenizer.ggml.tokens`` and a ``tokenizer.ggml.merges`` key (loading fails with
  "cannot find tokenizer merges in model file" without it; an empty list is accepted).
* Tokens are spelled in GPT-2's byte-to-unicode alphabet (printable bytes as
  themselves, the rest shifted to U+0100...): token ``i`` is byte ``i``. With no merges
  BPE leaves every byte as its own token, so llama.cpp tokenises text to its UTF-8
  bytes and detokenises back, whatever the pre-tokenizer regex.
* ``tokenizer.ggml.pre = "default"``; ``token_type`` all 1 (normal).
* A byte vocabulary has no BOS/EOS. Without ids in the file llama.cpp falls back to
  token 11 (byte 0x0B) for both, harmless for text models; ``add_bos_token`` is written
  False so nothing is prepended.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..models.config import ModelConfig
from ..tensors import BLOCK_LAYOUT, GGMLType, TensorData
from .gguf import DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_FORMATS, GGUFValueType

GGUF_VERSION = 3
_MAX_NAME_BYTES = 63   # llama.cpp's GGML_MAX_NAME is 64 including the terminating NUL

#: Array keys whose element type llama.cpp fixes, so an empty list still gets it right.
_KNOWN_ARRAY_TYPES = {
    "tokenizer.ggml.tokens": GGUFValueType.STRING,
    "tokenizer.ggml.merges": GGUFValueType.STRING,
    "tokenizer.ggml.scores": GGUFValueType.FLOAT32,
    "tokenizer.ggml.token_type": GGUFValueType.INT32,
    "general.languages": GGUFValueType.STRING,
    "general.tags": GGUFValueType.STRING,
}

_NUMPY_TO_GGUF: dict[np.dtype, GGUFValueType] = {np.dtype(dt): vt for vt, (_, dt) in SCALAR_FORMATS.items()
                  if vt != GGUFValueType.BOOL}
_NUMPY_TO_GGUF[np.dtype(bool)] = GGUFValueType.BOOL


@dataclass(frozen=True)
class GGUFValue:
    """A metadata value with an explicit GGUF type.

    For arrays ``type`` is ``ARRAY`` and ``sub_type`` the element type (for nested
    arrays, the elements must themselves be :class:`GGUFValue` arrays).
    """

    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None

    def __post_init__(self):
        if self.type == GGUFValueType.ARRAY and self.sub_type is None:
            raise TypeError("an ARRAY GGUFValue needs sub_type")


def typed(metadata: dict[str, Any], value_types: dict[str, Any]) -> dict[str, Any]:
    """Wrap read metadata in :class:`GGUFValue` using the types the reader recorded, so
    a file can be rewritten with exactly its original types."""
    def wrap(value: Any, vtype: Any) -> Any:
        if isinstance(vtype, tuple):
            sub = vtype[1]
            if isinstance(sub, tuple):
                return GGUFValue([wrap(v, sub) for v in value], GGUFValueType.ARRAY,
                                 GGUFValueType.ARRAY)
            return GGUFValue(value, GGUFValueType.ARRAY, sub if sub is not None else GGUFValueType.ARRAY)
        return GGUFValue(value, vtype)
    return {key: wrap(value, value_types[key]) for key, value in metadata.items()}


def _infer(key: str, value: Any) -> GGUFValue:
    if isinstance(value, GGUFValue):
        return value
    if isinstance(value, (bool, np.bool_)):
        return GGUFValue(bool(value), GGUFValueType.BOOL)
    if isinstance(value, np.generic):
        vtype = _NUMPY_TO_GGUF.get(value.dtype)
        if vtype is None:
            raise TypeError(f"metadata {key!r}: numpy {value.dtype} has no GGUF type")
        return GGUFValue(value.item(), vtype)
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return GGUFValue(value, GGUFValueType.UINT32)
        if -(1 << 31) <= value < 0:
            return GGUFValue(value, GGUFValueType.INT32)
        if 0 <= value < 1 << 64:
            return GGUFValue(value, GGUFValueType.UINT64)
        if -(1 << 63) <= value < 0:
            return GGUFValue(value, GGUFValueType.INT64)
        raise ValueError(f"metadata {key!r}: integer {value} does not fit 64 bits")
    if isinstance(value, float):
        return GGUFValue(value, GGUFValueType.FLOAT32)
    if isinstance(value, str):
        return GGUFValue(value, GGUFValueType.STRING)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise TypeError(f"metadata {key!r}: only 1-D arrays can be metadata")
        vtype = _NUMPY_TO_GGUF.get(value.dtype.newbyteorder("<") if value.dtype.byteorder == ">"
                                   else value.dtype)
        if vtype is None:
            raise TypeError(f"metadata {key!r}: numpy {value.dtype} has no GGUF type")
        return GGUFValue(value, GGUFValueType.ARRAY, vtype)
    if isinstance(value, (list, tuple)):
        sub = _KNOWN_ARRAY_TYPES.get(key)
        if sub is None:
            if not value:
                raise TypeError(f"metadata {key!r}: cannot infer the element type of an empty "
                                "list; wrap it in GGUFValue(..., ARRAY, sub_type)")
            kinds = {type(v) for v in value}
            if kinds <= {bool, np.bool_}:
                sub = GGUFValueType.BOOL
            elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
                sub = GGUFValueType.INT32
            elif all(isinstance(v, (int, float, np.integer, np.floating))
                     and not isinstance(v, bool) for v in value):
                sub = GGUFValueType.FLOAT32
            elif kinds == {str}:
                sub = GGUFValueType.STRING
            elif all(isinstance(v, (list, tuple, GGUFValue)) for v in value):
                return GGUFValue([_infer(key, v) for v in value], GGUFValueType.ARRAY,
                                 GGUFValueType.ARRAY)
            else:
                raise TypeError(f"metadata {key!r}: list mixes {sorted(k.__name__ for k in kinds)}")
        return GGUFValue(list(value), GGUFValueType.ARRAY, sub)
    raise TypeError(f"metadata {key!r}: {type(value).__name__} has no GGUF type")


def _string_bytes(text: str) -> bytes:
    # surrogateescape mirrors the reader, so undecodable token bytes survive a round trip.
    raw = text.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _encode(key: str, item: GGUFValue, out: list[bytes]) -> None:
    vtype = GGUFValueType(item.type)
    if vtype == GGUFValueType.STRING:
        if not isinstance(item.value, str):
            raise TypeError(f"metadata {key!r}: STRING value must be str")
        out.append(_string_bytes(item.value))
    elif vtype == GGUFValueType.ARRAY:
        assert item.sub_type is not None  # GGUFValue.__post_init__ checks it
        sub = GGUFValueType(item.sub_type)
        values = item.value
        out.append(struct.pack("<IQ", sub, len(values)))
        if sub == GGUFValueType.STRING:
            out.extend(_string_bytes(v) for v in values)
        elif sub == GGUFValueType.ARRAY:
            for v in values:
                _encode(key, v if isinstance(v, GGUFValue) else _infer(key, v), out)
        else:
            dtype = SCALAR_FORMATS[sub][1]
            arr = np.asarray(values)
            if sub == GGUFValueType.BOOL:
                arr = arr.astype(bool)
            elif arr.size and np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise ValueError(f"metadata {key!r}: values out of range for {sub.name}")
            out.append(arr.astype(dtype).tobytes())
    else:
        fmt = SCALAR_FORMATS[vtype][0]
        try:
            out.append(struct.pack(fmt, item.value))
        except struct.error as exc:
            raise ValueError(f"metadata {key!r}: {item.value!r} does not fit {vtype.name}: {exc}") from None


def _metadata_bytes(key: str, value: Any) -> bytes:
    item = _infer(key, value)
    parts = [_string_bytes(key), struct.pack("<I", item.type)]
    _encode(key, item, parts)
    return b"".join(parts)


def _tensor_entry(name: str, tensor: np.ndarray | TensorData) -> tuple[GGMLType, tuple[int, ...], np.ndarray]:
    """(type, logical numpy shape, contiguous raw data) of one tensor to write."""
    if isinstance(tensor, TensorData):
        ggml_type, shape, data = GGMLType(tensor.type), tuple(tensor.shape), tensor.data
        block, block_bytes = BLOCK_LAYOUT[ggml_type]
        if shape[-1] % block:
            raise ValueError(f"tensor {name!r}: {ggml_type.name} rows need a multiple of {block} "
                             f"elements, got {shape[-1]}")
        expected = math.prod(shape) // block * block_bytes
        if data.nbytes != expected:
            raise ValueError(f"tensor {name!r}: {ggml_type.name} {shape} takes {expected} bytes, "
                             f"data has {data.nbytes}")
        return ggml_type, shape, np.ascontiguousarray(data)
    arr = np.asarray(tensor)
    if arr.dtype == np.float32:
        ggml_type = GGMLType.F32
    elif arr.dtype == np.float16:
        ggml_type = GGMLType.F16
    else:
        raise TypeError(f"tensor {name!r}: dtype {arr.dtype} (write float32 or float16 arrays, "
                        "or TensorData for other types)")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return ggml_type, tuple(arr.shape), np.ascontiguousarray(little)


def write_gguf(path: str | os.PathLike, arch: str, metadata: dict[str, Any],
               tensors: dict[str, np.ndarray | TensorData], alignment: int = DEFAULT_ALIGNMENT) -> Path:
    """Write a GGUF v3 file. ``general.architecture`` is set to ``arch`` (and
    ``general.alignment`` when not the default) unless ``metadata`` has them; tensors
    are written in ``tensors``' order, each at an ``alignment``-aligned offset. Shapes
    are numpy order (the file stores them reversed)."""
    path = Path(path)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    meta: dict[str, Any] = {"general.architecture": arch}
    if alignment != DEFAULT_ALIGNMENT:
        meta["general.alignment"] = GGUFValue(alignment, GGUFValueType.UINT32)
    meta.update(metadata)
    arch_value = meta["general.architecture"]
    if (arch_value.value if isinstance(arch_value, GGUFValue) else arch_value) != arch:
        raise ValueError(f"metadata general.architecture {arch_value!r} contradicts arch={arch!r}")
    declared = meta.get("general.alignment", alignment)
    if (declared.value if isinstance(declared, GGUFValue) else declared) != alignment:
        raise ValueError("metadata general.alignment contradicts alignment=")

    kv_blobs = [_metadata_bytes(key, value) for key, value in meta.items()]
    entries = []
    infos = []
    offset = 0
    for name, tensor in tensors.items():
        if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
            raise ValueError(f"tensor name {name!r} is longer than {_MAX_NAME_BYTES} bytes")
        ggml_type, shape, data = _tensor_entry(name, tensor)
        if not 1 <= len(shape) <= 4 or 0 in shape:
            raise ValueError(f"tensor {name!r}: shape {shape} must have 1 to 4 non-empty dims")
        dims = tuple(reversed(shape))
        infos.append(_string_bytes(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims,
                                                       ggml_type, offset))
        entries.append((data, offset))
        offset += -(-data.nbytes // alignment) * alignment

    header = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(meta))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header)
        for blob in kv_blobs:
            fh.write(blob)
        for blob in infos:
            fh.write(blob)
        _pad(fh, alignment)
        start = fh.tell()
        for data, rel in entries:
            assert fh.tell() == start + rel
            fh.write(data.reshape(-1).data.cast("B"))
            _pad(fh, alignment)
    os.replace(tmp, path)
    return path


def _pad(fh: BinaryIO, alignment: int) -> None:
    fh.write(b"\0" * (-fh.tell() % alignment))


# --------------------------------------------------------------------------------------
# metadata helpers


def gpt2_byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: entry ``b`` is the character byte ``b`` is
    spelled with in a byte-level BPE vocabulary."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
                 + list(range(0xAE, 0xFF + 1)))
    table = {}
    shifted = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return [table[b] for b in range(256)]


def _hparams_metadata(config: ModelConfig, name: str, file_type: int,
                      arch_keys: dict[str, Any]) -> dict[str, Any]:
    """The general keys and the ``{arch}.*`` hyper-parameters every architecture writes, then
    ``arch_keys`` (its own), then the head size when it is not n_embd / n_head (key order is
    file order)."""
    a = config.arch
    md: dict[str, Any] = {
        "general.architecture": a,
        "general.name": name,
        "general.file_type": GGUFValue(file_type, GGUFValueType.UINT32),
        f"{a}.context_length": config.n_ctx_train,
        f"{a}.embedding_length": config.n_embd,
        f"{a}.feed_forward_length": config.n_hidden,
        f"{a}.block_count": config.n_layer,
        f"{a}.attention.head_count": config.n_head,
        f"{a}.attention.head_count_kv": config.n_kv_head,
        **arch_keys,
    }
    if config.head_dim != config.n_embd // config.n_head:
        md[f"{a}.attention.key_length"] = config.head_dim
        md[f"{a}.attention.value_length"] = config.head_dim
    return md


def gpt2_metadata(config: ModelConfig, tokenizer: str | None = "byte", *, name: str = "smallmind-gpt2",
                  file_type: int = 0) -> dict[str, Any]:
    """The metadata llama.cpp's ``gpt2`` architecture reads, for ``config``.

    ``tokenizer="byte"`` adds the byte-level vocabulary described in the module
    docstring; ``None`` leaves the tokenizer keys out. ``file_type`` is llama.cpp's
    LLAMA_FTYPE (0 all F32, 1 mostly F16).
    """
    if config.arch != "gpt2":
        raise ValueError(f"gpt2_metadata needs a gpt2 config, got arch={config.arch!r}")
    md = _hparams_metadata(config, name, file_type, {
        "gpt2.attention.layer_norm_epsilon": float(config.norm_eps),
    })
    if tokenizer == "byte":
        if config.vocab_size != 256:
            raise ValueError(f"a byte tokenizer needs vocab_size 256, got {config.vocab_size}")
        md.update({
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": gpt2_byte_tokens(),
            "tokenizer.ggml.token_type": [1] * 256,
            "tokenizer.ggml.merges": [],
            "tokenizer.ggml.add_bos_token": False,
            "tokenizer.ggml.add_eos_token": False,
        })
    elif tokenizer is not None:
        raise ValueError(f"unknown tokenizer kind {tokenizer!r} (use 'byte' or None)")
    return md


def llama_metadata(config: ModelConfig, *, name: str = "smallmind-llama",
                   file_type: int = 0) -> dict[str, Any]:
    """The ``llama.*`` hyper-parameter keys llama.cpp reads, for a llama ``config``."""
    if config.arch != "llama":
        raise ValueError(f"llama_metadata needs a llama config, got arch={config.arch!r}")
    md = _hparams_metadata(config, name, file_type, {
        "llama.attention.layer_norm_rms_epsilon": float(config.norm_eps),
        "llama.rope.freq_base": float(config.rope_theta),
        "llama.rope.dimension_count": config.rope_dim,
        "llama.vocab_size": config.vocab_size,
    })
    if config.rope_scale != 1.0:
        md["llama.rope.scaling.type"] = "linear"
        md["llama.rope.scaling.factor"] = float(config.rope_scale)
    return md

