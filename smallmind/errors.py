"""Exceptions raised by smallmind. Every one derives from :class:`SmallMindError`."""
from __future__ import annotations


class SmallMindError(Exception):
    """Base class of every error smallmind raises on purpose."""


class ModelFormatError(SmallMindError, ValueError):
    """A model file is malformed or uses something smallmind does not support.

    The message names the file and, where it applies, the tensor or metadata key,
    the byte offset and the offending value.
    """

    def __init__(self, message: str, *, path: object = None, key: str | None = None,
                 offset: int | None = None):
        parts = []
        if path is not None:
            parts.append(str(path))
        if key is not None:
            parts.append(key)
        if offset is not None:
            parts.append(f"offset {offset}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.key = key
        self.offset = offset


class UnsupportedModelError(ModelFormatError):
    """The file is well formed but uses an architecture or tensor type smallmind lacks."""


class TokenizerError(SmallMindError, ValueError):
    """A tokenizer file is malformed, or a token id is outside the vocabulary."""


class SamplingError(SmallMindError, ValueError):
    """A sampling parameter is out of range, or the logits cannot be sampled (NaN)."""


class SamplingTypeError(SamplingError, TypeError):
    """A sampling parameter has the wrong type (a ``TypeError`` and a :class:`SamplingError`)."""


class CachePolicyError(SmallMindError, ValueError):
    """A KV-cache overflow policy cannot work for this model (e.g. sliding learned positions)."""


class ContextOverflowError(SmallMindError):
    """The sequence would grow past the model's context window."""


class ShapeError(SmallMindError, ValueError):
    """Arrays handed to a kernel have shapes, strides or dtypes that do not fit."""


class CPUFeatureError(SmallMindError, ImportError):
    """This CPU lacks an instruction set the compiled kernels were built for."""


class SessionBusyError(SmallMindError, RuntimeError):
    """A session is already running a generate call (sessions serve one call at a time)."""


class StaleStreamError(SmallMindError, RuntimeError):
    """A streamed generation was resumed after its session started another call."""


class NonFiniteError(SmallMindError, FloatingPointError):
    """The model produced NaN or infinite activations; the message names position and layer."""
