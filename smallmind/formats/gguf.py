"""GGUF reader (versions 2 and 3, little-endian).

The file is memory-mapped read-only and every tensor becomes a :class:`TensorData`
whose ``data`` is a numpy view into the map: loading reads the header and the
metadata, never the weights, so a model costs page cache rather than private memory
and starts in milliseconds.

Layout (all integers little-endian)::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to general.alignment (default 32)
    tensor data; each tensor starts at data_start + offset, offset a multiple of the alignment

A string is a u64 byte length followed by UTF-8 bytes; an array is a u32 element type,
a u64 count and the elements. ``ne[0]`` is the innermost (contiguous) dimension, so the
numpy shape is ``ne`` reversed: a linear layer's weight is ``ne = (in, out)`` in the file
and ``(out, in)`` here.

Every count, length, offset and shape is checked against the file size before anything
is allocated or viewed, so a corrupt or hostile file gives a :class:`ModelFormatError`
naming the key or tensor and the byte offset, never a huge allocation or a crash.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from .._core._strings import read_strings
from ..errors import ContextOverflowError, ModelFormatError, TokenizerError, UnsupportedModelError
from ..models.config import ModelConfig
from ..models.spec import check_tensors, expected_tensor_shapes  # noqa: F401  (re-exported)
from ..tensors import BLOCK_LAYOUT, GGMLType, TensorData
from . import LoadedModel

GGUF_MAGIC = b"GGUF"
#: Versions this reader understands. Version 1 used 32-bit counts and lengths; it
#: predates every model anyone still distributes.
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Sanity limits. They sit far above anything a real model uses and exist so that a
# corrupt count is refused before it turns into a loop of billions or an allocation.
_MAX_ARRAY_DEPTH = 4          # arrays of arrays of ... (real files use one level)
_MAX_DIMS = 4                 # GGML_MAX_DIMS
_MAX_ALIGNMENT = 1 << 16
#: Numeric arrays up to this many elements are read as lists (per-layer values, small
#: tables); longer ones (token types, scores) as read-only numpy views into the file, as
#: a list of 262k Python floats costs 8 MiB where the view costs nothing.
ARRAY_LIST_LIMIT = 1024


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


#: Fixed-size scalar types: struct format and numpy dtype (little-endian).
SCALAR_FORMATS: dict[GGUFValueType, tuple[str, np.dtype]] = {
    GGUFValueType.UINT8: ("<B", np.dtype("<u1")),
    GGUFValueType.INT8: ("<b", np.dtype("<i1")),
    GGUFValueType.UINT16: ("<H", np.dtype("<u2")),
    GGUFValueType.INT16: ("<h", np.dtype("<i2")),
    GGUFValueType.UINT32: ("<I", np.dtype("<u4")),
    GGUFValueType.INT32: ("<i", np.dtype("<i4")),
    GGUFValueType.FLOAT32: ("<f", np.dtype("<f4")),
    GGUFValueType.BOOL: ("<?", np.dtype("u1")),
    GGUFValueType.UINT64: ("<Q", np.dtype("<u8")),
    GGUFValueType.INT64: ("<q", np.dtype("<i8")),
    GGUFValueType.FLOAT64: ("<d", np.dtype("<f8")),
}

#: ggml type ids smallmind knows by name but cannot run, for a clearer refusal than
#: "unknown type 20".
_UNSUPPORTED_GGML_TYPES = {
    4: "Q4_2 (removed)", 5: "Q4_3 (removed)", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 31: "Q4_0_4_4", 32: "Q4_0_4_8",
    33: "Q4_0_8_8", 34: "TQ1_0", 35: "TQ2_0", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8",
    38: "IQ4_NL_8_8", 39: "MXFP4",
}

SUPPORTED_ARCHITECTURES = ("llama", "gpt2", "gemma3")


@dataclass
class GGUFFile:
    """Everything a GGUF file holds, parsed; tensors are views into ``mapping``."""

    path: Path
    version: int
    alignment: int
    #: key -> value; integers/floats/bools/strings as Python scalars, arrays as lists,
    #: except numeric arrays longer than ``ARRAY_LIST_LIMIT``: read-only 1-D numpy views.
    metadata: dict[str, Any]
    #: key -> GGUF value type; arrays as ``(ARRAY, element type)`` (nested: deeper tuples).
    value_types: dict[str, Any]
    tensors: dict[str, TensorData]
    #: absolute byte offset of each tensor's data in the file
    tensor_offsets: dict[str, int]
    data_offset: int
    file_size: int
    mapping: Any = field(repr=False, default=None)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure names the offset."""

    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf: Any, size: int, path: Path):
        self.buf = buf
        self.pos = 0
        self.size = size
        self.path = path

    def error(self, message: str, key: str | None = None, offset: int | None = None,
              cls: type[ModelFormatError] = ModelFormatError) -> ModelFormatError:
        return cls(message, path=self.path, key=key, offset=self.pos if offset is None else offset)

    def need(self, n: int, what: str, key: str | None = None) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.error(f"truncated: {what} needs {n} bytes but only "
                             f"{max(self.size - self.pos, 0)} remain", key)

    def scalar(self, vtype: GGUFValueType, what: str, key: str | None = None) -> Any:
        fmt, dtype = SCALAR_FORMATS[vtype]
        self.need(dtype.itemsize, what, key)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += dtype.itemsize
        return value

    def u32(self, what: str, key: str | None = None) -> int:
        return self.scalar(GGUFValueType.UINT32, what, key)

    def u64(self, what: str, key: str | None = None) -> int:
        return self.scalar(GGUFValueType.UINT64, what, key)

    def string(self, what: str, key: str | None = None) -> str:
        start = self.pos
        length = self.u64(f"length of {what}", key)
        # The length is checked against the bytes left before slicing, so a corrupt
        # length of 2**63 is an error, not an attempt to allocate it.
        if length > self.size - self.pos:
            raise self.error(f"{what} claims {length} bytes but only {self.size - self.pos} "
                             "remain in the file", key, start)
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        # surrogateescape keeps invalid UTF-8 (possible in token lists) losslessly, so a
        # round trip through the writer gives back the same bytes.
        return bytes(raw).decode("utf-8", errors="surrogateescape")


def _value_type(raw: int, cursor: _Cursor, key: str, offset: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cursor.error(f"unknown metadata value type {raw}", key, offset) from None


def _min_value_size(vtype: GGUFValueType) -> int:
    """Fewest bytes one value of ``vtype`` can take: bounds an array's count up front."""
    if vtype == GGUFValueType.STRING:
        return 8
    if vtype == GGUFValueType.ARRAY:
        return 12
    return SCALAR_FORMATS[vtype][1].itemsize


def _read_value(cursor: _Cursor, vtype: GGUFValueType, key: str, depth: int = 0) -> tuple[Any, Any]:
    """One metadata value and its (possibly nested) type."""
    if vtype == GGUFValueType.STRING:
        return cursor.string("string value", key), vtype
    if vtype == GGUFValueType.BOOL:
        offset = cursor.pos
        raw = cursor.scalar(GGUFValueType.UINT8, "bool value", key)
        if raw > 1:
            raise cursor.error(f"bool value is {raw}, not 0 or 1", key, offset)
        return bool(raw), vtype
    if vtype != GGUFValueType.ARRAY:
        return cursor.scalar(vtype, f"{vtype.name} value", key), vtype

    if depth >= _MAX_ARRAY_DEPTH:
        raise cursor.error(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} levels", key)
    offset = cursor.pos
    elem_type = _value_type(cursor.u32("array element type", key), cursor, key, offset)
    count_offset = cursor.pos
    count = cursor.u64("array length", key)
    # Each element takes at least _min_value_size bytes, so a count the remaining bytes
    # cannot hold is refused before looping over it.
    if count * _min_value_size(elem_type) > cursor.size - cursor.pos:
        raise cursor.error(f"array of {count} {elem_type.name} values does not fit in the "
                           f"{cursor.size - cursor.pos} bytes left", key, count_offset)
    if elem_type in SCALAR_FORMATS:
        dtype = SCALAR_FORMATS[elem_type][1]
        values = np.frombuffer(cursor.buf, dtype=dtype, count=count, offset=cursor.pos)
        cursor.pos += count * dtype.itemsize
        if elem_type == GGUFValueType.BOOL:
            if count and int(values.max()) > 1:
                raise cursor.error("bool array holds a value other than 0 or 1", key, offset)
            values = values.view(np.bool_)
        if count > ARRAY_LIST_LIMIT:
            values.flags.writeable = False
            return values, (GGUFValueType.ARRAY, elem_type)
        return values.tolist(), (GGUFValueType.ARRAY, elem_type)
    if elem_type == GGUFValueType.STRING:
        return _read_string_array(cursor, count, key), (GGUFValueType.ARRAY, elem_type)
    items = []
    inner_type: Any = (GGUFValueType.ARRAY, None)
    for _ in range(count):
        value, inner_type = _read_value(cursor, GGUFValueType.ARRAY, key, depth + 1)
        items.append(value)
    return items, (GGUFValueType.ARRAY, inner_type if count else (GGUFValueType.ARRAY, None))


def _read_string_array(cursor: _Cursor, count: int, key: str) -> list[str]:
    # The hot loop of loading a model with a 262k-token vocabulary, in C: each length is
    # checked against the file's end before its string is decoded.
    with memoryview(cursor.buf) as view:
        out, pos, failed = read_strings(view[:cursor.size], cursor.pos, count)
    if failed == 0:
        cursor.pos = pos
        raise cursor.error(f"truncated: string {len(out)} of {count} has no length", key)
    if failed == 1:
        (length,) = struct.unpack_from("<Q", cursor.buf, pos)
        raise cursor.error(f"string {len(out)} of {count} claims {length} bytes but only "
                           f"{cursor.size - pos - 8} remain", key, pos)
    cursor.pos = pos
    return out


def _ggml_type(raw: int, cursor: _Cursor, name: str, offset: int) -> GGMLType:
    try:
        ggml_type = GGMLType(raw)
    except ValueError:
        if raw in _UNSUPPORTED_GGML_TYPES:
            raise cursor.error(f"tensor type {_UNSUPPORTED_GGML_TYPES[raw]} (id {raw}) is not "
                               "supported by smallmind", name, offset, UnsupportedModelError) from None
        raise cursor.error(f"unknown tensor type id {raw}", name, offset) from None
    if ggml_type not in BLOCK_LAYOUT:
        raise cursor.error(f"tensor type {ggml_type.name} is not supported", name, offset,
                           UnsupportedModelError)
    return ggml_type


def tensor_view(buf: Any, ggml_type: GGMLType, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """The numpy view of a tensor stored at ``offset`` in ``buf`` (no copy).

    Float types keep their logical shape; quantised types become ``(rows, row_bytes)``
    uint8 with ``rows`` the product of every dimension but the last (blocks never
    straddle rows because each row is a whole number of blocks).
    """
    if ggml_type == GGMLType.F32:
        return np.frombuffer(buf, np.float32, math.prod(shape), offset).reshape(shape)
    if ggml_type == GGMLType.F16:
        return np.frombuffer(buf, np.float16, math.prod(shape), offset).reshape(shape)
    if ggml_type == GGMLType.BF16:
        return np.frombuffer(buf, np.uint16, math.prod(shape), offset).reshape(shape)
    block, block_bytes = BLOCK_LAYOUT[ggml_type]
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    row_bytes = cols // block * block_bytes
    return np.frombuffer(buf, np.uint8, rows * row_bytes, offset).reshape(rows, row_bytes)


def tensor_nbytes(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    block, block_bytes = BLOCK_LAYOUT[ggml_type]
    return math.prod(shape) // block * block_bytes


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF file; tensors are read-only views into a memory map of it."""
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < 24:
        raise ModelFormatError(f"file of {file_size} bytes is too short for a GGUF header", path=path)
    with open(path, "rb") as fh:
        # The map outlives the file handle; the tensor views keep it alive.
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    cursor = _Cursor(mapping, file_size, path)

    magic = bytes(mapping[0:4])
    if magic != GGUF_MAGIC:
        raise ModelFormatError(f"bad magic {magic!r}, expected {GGUF_MAGIC!r}", path=path, offset=0)
    cursor.pos = 4
    version = cursor.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise UnsupportedModelError("GGUF version 1 is not supported (re-convert the model "
                                        "with a current llama.cpp)", path=path, offset=4)
        if version & 0xFFFF == 0 and version >> 16:
            raise UnsupportedModelError(f"big-endian GGUF (version field {version:#x}) is not "
                                        "supported", path=path, offset=4)
        raise UnsupportedModelError(f"unsupported GGUF version {version}", path=path, offset=4)
    n_tensors = cursor.u64("tensor count")
    n_kv = cursor.u64("metadata count")
    # A key-value pair is at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at
    # least 8 + 4 + 4 + 8; counts the file cannot hold are corrupt.
    if n_kv * 13 > file_size - cursor.pos:
        raise ModelFormatError(f"metadata count {n_kv} cannot fit in a {file_size}-byte file",
                               path=path, offset=16)
    if n_tensors * 24 > file_size - cursor.pos:
        raise ModelFormatError(f"tensor count {n_tensors} cannot fit in a {file_size}-byte file",
                               path=path, offset=8)

    metadata: dict[str, Any] = {}
    value_types: dict[str, Any] = {}
    for index in range(n_kv):
        key_offset = cursor.pos
        key = cursor.string(f"metadata key {index}")
        if key in metadata:
            raise ModelFormatError("duplicate metadata key", path=path, key=key, offset=key_offset)
        type_offset = cursor.pos
        vtype = _value_type(cursor.u32("value type", key), cursor, key, type_offset)
        metadata[key], value_types[key] = _read_value(cursor, vtype, key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0
            or alignment & (alignment - 1) or alignment > _MAX_ALIGNMENT):
        raise ModelFormatError(f"alignment {alignment!r} is not a power of two up to "
                               f"{_MAX_ALIGNMENT}", path=path, key="general.alignment")

    infos = []
    for index in range(n_tensors):
        info_offset = cursor.pos
        name = cursor.string(f"name of tensor {index}")
        n_dims = cursor.u32("dimension count", name)
        if not 1 <= n_dims <= _MAX_DIMS:
            raise ModelFormatError(f"tensor has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)",
                                   path=path, key=name, offset=cursor.pos - 4)
        ne = [cursor.u64("dimension", name) for _ in range(n_dims)]
        if any(d == 0 for d in ne):
            raise ModelFormatError(f"tensor has an empty dimension {ne}", path=path, key=name,
                                   offset=info_offset)
        type_offset = cursor.pos
        ggml_type = _ggml_type(cursor.u32("tensor type", name), cursor, name, type_offset)
        rel_offset = cursor.u64("data offset", name)
        infos.append((name, ne, ggml_type, rel_offset, info_offset))

    data_offset = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, TensorData] = {}
    offsets: dict[str, int] = {}
    packed = 0  # llama.cpp: each offset equals the running size of the padded tensors before it
    for name, ne, ggml_type, rel_offset, info_offset in infos:
        if name in tensors:
            raise ModelFormatError("duplicate tensor name", path=path, key=name, offset=info_offset)
        block = BLOCK_LAYOUT[ggml_type][0]
        if ne[0] % block:
            raise ModelFormatError(f"{ggml_type.name} rows need a multiple of {block} elements, "
                                   f"the tensor's innermost dimension is {ne[0]}",
                                   path=path, key=name, offset=info_offset)
        if rel_offset % alignment:
            raise ModelFormatError(f"data offset {rel_offset} is not a multiple of the alignment "
                                   f"{alignment}", path=path, key=name, offset=info_offset)
        shape = tuple(int(d) for d in reversed(ne))
        nbytes = tensor_nbytes(ggml_type, shape)
        if rel_offset != packed:
            raise ModelFormatError(f"data offset {rel_offset}, expected {packed}: tensors are packed "
                                   f"in order, each padded to {alignment} bytes (a gap or overlap "
                                   f"means a changed type or shape)", path=path, key=name,
                                   offset=info_offset)
        packed += -(-nbytes // alignment) * alignment
        start = data_offset + rel_offset
        if start + nbytes > file_size:
            raise ModelFormatError(f"tensor data [{start}, {start + nbytes}) lies outside the "
                                   f"{file_size}-byte file", path=path, key=name, offset=start)
        tensors[name] = TensorData(name, ggml_type, shape, tensor_view(mapping, ggml_type, shape, start))
        offsets[name] = start

    return GGUFFile(path=path, version=version, alignment=alignment, metadata=metadata,
                    value_types=value_types, tensors=tensors, tensor_offsets=offsets,
                    data_offset=data_offset, file_size=file_size, mapping=mapping)


# --------------------------------------------------------------------------------------
# metadata -> ModelConfig


class _Meta:
    """Typed access to ``{arch}.*`` keys with errors naming the key."""

    def __init__(self, metadata: dict[str, Any], arch: str, path: Path | None):
        self.md = metadata
        self.arch = arch
        self.path = path

    def _get(self, name: str, kind: str, required: bool, default: Any) -> Any:
        key = name if name.startswith(("general.", "tokenizer.")) else f"{self.arch}.{name}"
        if key not in self.md:
            if required:
                raise ModelFormatError("required metadata key is missing", path=self.path, key=key)
            return default
        value = self.md[key]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "str": isinstance(value, str),
        }[kind]
        if not ok:
            raise ModelFormatError(f"expected {kind}, found {type(value).__name__} {value!r}",
                                   path=self.path, key=key)
        if kind == "int" and value <= 0:
            raise ModelFormatError(f"must be positive, got {value}", path=self.path, key=key)
        return float(value) if kind == "float" else value

    def int(self, name: str, default: int | None = None, required: bool = True) -> int:
        return self._get(name, "int", required and default is None, default)

    def float(self, name: str, default: float | None = None, required: bool = True) -> float:
        return self._get(name, "float", required and default is None, default)

    def str(self, name: str, default: str | None = None) -> str | None:
        return self._get(name, "str", False, default)


def config_from_gguf(metadata: dict[str, Any], tensors: dict[str, TensorData], *,
                     path: Path | None = None, n_ctx: int | None = None) -> ModelConfig:
    """Map GGUF metadata (llama.cpp's key names) to a :class:`ModelConfig`."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError("general.architecture is missing or not a string", path=path,
                               key="general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} is not supported (smallmind runs "
                                    f"{', '.join(SUPPORTED_ARCHITECTURES)})", path=path,
                                    key="general.architecture")
    meta = _Meta(metadata, arch, path)
    embd = tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2:
        raise ModelFormatError("token_embd.weight is missing or not 2-D", path=path,
                               key="token_embd.weight")

    n_embd = meta.int("embedding_length")
    n_head = meta.int("attention.head_count")
    trained_ctx = meta.int("context_length")
    if n_ctx is not None:
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
        if arch == "gpt2" and n_ctx > trained_ctx:
            # Learned position embeddings have exactly context_length rows.
            raise ContextOverflowError(f"{path}: n_ctx={n_ctx} exceeds the {trained_ctx} positions "
                                       "a gpt2 model has learned")
    head_dim = meta.int("attention.key_length", required=False)
    value_dim = meta.int("attention.value_length", required=False)
    if head_dim is not None and value_dim is not None and value_dim != head_dim:
        raise UnsupportedModelError(f"value head size {value_dim} differs from key head size "
                                    f"{head_dim}", path=path, key=f"{arch}.attention.value_length")
    if head_dim is None:
        if n_embd % n_head:
            raise ModelFormatError(f"embedding_length {n_embd} is not a multiple of head_count "
                                   f"{n_head} and no key_length is given", path=path,
                                   key=f"{arch}.attention.head_count")
        head_dim = n_embd // n_head

    n_layer = meta.int("block_count")
    if n_layer > len(tensors):
        # Checked before anything loops over the layers: a corrupt count is not a reason
        # to build millions of expected tensor names.
        raise ModelFormatError(f"block_count {n_layer} exceeds the {len(tensors)} tensors in "
                               "the file", path=path, key=f"{arch}.block_count")

    extra: dict[str, Any] = {}
    name = metadata.get("general.name")
    if isinstance(name, str):
        extra["name"] = name
    kwargs: dict[str, Any] = dict(
        arch=arch,
        vocab_size=embd.shape[0],
        n_ctx=n_ctx or trained_ctx,
        n_ctx_train=trained_ctx,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=meta.int("attention.head_count_kv", n_head),
        head_dim=head_dim,
        n_hidden=_feed_forward_length(meta, path),
        tie_embeddings="output.weight" not in tensors,
    )

    if arch == "gpt2":
        kwargs.update(norm_eps=meta.float("attention.layer_norm_epsilon"), bias=True)
    else:
        kwargs.update(
            norm_eps=meta.float("attention.layer_norm_rms_epsilon"),
            bias=False,
            rope_theta=meta.float("rope.freq_base", 10000.0),
            # llama.cpp's LLAMA_ROPE_TYPE_NORM for llama (the converter permutes Q/K so
            # adjacent pairs rotate), NEOX (first half with second half) for gemma3.
            rope_neox=arch == "gemma3",
            rope_scale=_rope_scale(meta, path),
        )
        rope_dim = meta.int("rope.dimension_count", head_dim)
        if rope_dim > head_dim or rope_dim % 2:
            raise ModelFormatError(f"rope dimension {rope_dim} does not fit head size {head_dim}",
                                   path=path, key=f"{arch}.rope.dimension_count")
        kwargs["rope_dim"] = rope_dim
    if arch == "gemma3":
        kwargs.update(_gemma3_settings(meta, kwargs, path))

    try:
        config = ModelConfig(**kwargs, extra=extra)
    except ValueError as exc:
        raise ModelFormatError(str(exc), path=path, key=f"{arch}.*") from None
    check_tensors(config, tensors, path=path)
    return config


def _feed_forward_length(meta: _Meta, path: Path | None) -> int:
    key = f"{meta.arch}.feed_forward_length"
    value = meta.md.get(key)
    # Some converters write one width per layer; smallmind needs them all equal.
    if isinstance(value, list):
        if not value or len(set(value)) != 1 or not isinstance(value[0], int) or value[0] <= 0:
            raise UnsupportedModelError(f"per-layer feed-forward widths {value[:8]} are not "
                                        "supported", path=path, key=key)
        return value[0]
    return meta.int("feed_forward_length")


def _rope_scale(meta: _Meta, path: Path | None) -> float:
    kind = meta.str("rope.scaling.type")
    if kind in (None, "none"):
        # Older files spell linear scaling as a bare factor.
        return meta.float("rope.scale_linear", 1.0)
    if kind == "linear":
        return meta.float("rope.scaling.factor")
    raise UnsupportedModelError(f"rope scaling {kind!r} is not supported (only linear)",
                                path=path, key=f"{meta.arch}.rope.scaling.type")


def _gemma3_settings(meta: _Meta, kwargs: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """Gemma 3 specifics, following llama.cpp's hparams for LLM_ARCH_GEMMA3."""
    n_layer = kwargs["n_layer"]
    head_dim = kwargs["head_dim"]
    out: dict[str, Any] = {
        "sliding_window": meta.int("attention.sliding_window"),
        # llama.cpp hard-codes pattern 6 (layers 5, 11, 17, ... attend globally) and a
        # 10k rope base for the local layers; the file carries neither.
        "sliding_window_pattern": 6,
        "rope_theta_local": 10000.0,
        "embed_scale": math.sqrt(kwargs["n_embd"]),
        "final_logit_softcap": meta.float("final_logit_softcapping", 0.0),
    }
    pattern = meta.md.get("gemma3.attention.sliding_window_pattern")
    if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
        out["sliding_window_pattern"] = pattern
    elif isinstance(pattern, list) and len(pattern) == n_layer:
        # Per-layer flags (True = sliding). Representable only when periodic with the
        # global layer last in each period.
        globals_ = [i for i, swa in enumerate(pattern) if not swa]
        period = globals_[0] + 1 if globals_ else 0
        if period and all((not pattern[i]) == ((i + 1) % period == 0) for i in range(n_layer)):
            out["sliding_window_pattern"] = period
        else:
            raise UnsupportedModelError("irregular sliding-window layer pattern", path=path,
                                        key="gemma3.attention.sliding_window_pattern")
    # gemma_pytorch: query_pre_attn_scalar is head_dim except for 27B (n_embd / n_head);
    # llama.cpp picks 27B by its 62 layers.
    if n_layer == 62:
        out["attn_scale"] = 1.0 / math.sqrt(kwargs["n_embd"] / kwargs["n_head"])
    else:
        out["attn_scale"] = 1.0 / math.sqrt(head_dim)
    return out


# --------------------------------------------------------------------------------------
# LoadedModel


def _tokenizer(metadata: dict[str, Any], tokenizer: Any, path: Path, vocab_size: int):
    """The caller's tokenizer, else the one the file's ``tokenizer.ggml.*`` keys describe
    (None when the file has none)."""
    from ..tokenizers.base import Tokenizer
    if tokenizer is not None:
        if isinstance(tokenizer, Tokenizer):
            tok = tokenizer
        else:
            from .llama2c import load_llama2c_tokenizer
            tok = load_llama2c_tokenizer(Path(tokenizer))
        if tok.vocab_size > vocab_size:
            raise TokenizerError(f"tokenizer has {tok.vocab_size} tokens but {path} only "
                                 f"{vocab_size} embeddings")
        return tok
    if "tokenizer.ggml.model" not in metadata:
        return None
    try:  # the tokenizer package may be built without GGUF support
        from ..tokenizers import from_gguf_metadata
    except ImportError:
        return None
    try:
        tok = from_gguf_metadata(metadata)
    except TokenizerError as exc:
        # Broken tokenizer keys make a broken model file.
        raise ModelFormatError(f"tokenizer metadata: {exc}", path=path,
                               key="tokenizer.ggml.model") from exc
    if tok.vocab_size > vocab_size:
        raise ModelFormatError(f"the tokenizer has {tok.vocab_size} tokens but token_embd.weight "
                               f"only {vocab_size} rows", path=path, key="tokenizer.ggml.tokens")
    return tok


def load_gguf(path: str | os.PathLike, *, tokenizer: Any = None,
              n_ctx: int | None = None) -> LoadedModel:
    """Load a GGUF model: config from metadata, tensors as memory-map views.

    ``tokenizer`` overrides the file's own: a :class:`Tokenizer`, or the path of a
    llama2.c ``tokenizer.bin``. ``n_ctx`` overrides the trained context length.
    """
    gguf = read_gguf(path)
    config = config_from_gguf(gguf.metadata, gguf.tensors, path=gguf.path, n_ctx=n_ctx)
    tok = _tokenizer(gguf.metadata, tokenizer, gguf.path, config.vocab_size)
    # The header is parsed (for Gemma, 6 MiB of token strings, scores and types): hand its
    # pages back rather than keep them resident. Long numeric arrays are views into them,
    # read again from the page cache if ever touched.
    header = gguf.data_offset - gguf.data_offset % mmap.PAGESIZE
    if header and hasattr(mmap, "MADV_DONTNEED"):
        gguf.mapping.madvise(mmap.MADV_DONTNEED, 0, header)
    template = gguf.metadata.get("tokenizer.chat_template")
    return LoadedModel(config=config, tensors=gguf.tensors, tokenizer=tok, path=gguf.path,
                       format="gguf", metadata=gguf.metadata,
                       chat_template=template if isinstance(template, str) else None)
