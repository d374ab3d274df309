"""What every decoder-only model shares: weights -> kernel objects, per-session state, forward.

A model is built from ``(ModelConfig, {name: TensorData})`` and knows nothing about files.
Its forward pass runs a fused Cython block per layer (``smallmind._core._blocks``) over a
:class:`State` holding the KV cache and a workspace of preallocated buffers, so the decode
loop allocates nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from .._core import _blocks
from .._core._matmul import Weight
from .._core._pool import BufferPool, default_pool
from ..errors import ModelFormatError, ShapeError
from ..kv_cache import KVCache, Shift
from ..tensors import GGMLType, TensorData
from .config import ModelConfig

#: Prompt positions processed per block call; bounds the workspace size.
DEFAULT_MAX_TOKENS = 128
#: The first entries of _blocks.OPS are the steps inside a layer (then embed, lm_head).
BLOCK_STEPS = _blocks.OPS.index("embed")


class Forward(NamedTuple):
    """What :meth:`DecoderModel.forward` did: the last position's logits (a view of the
    workspace, valid until the next call) and the shifts of a sliding cache (oldest first;
    empty unless the window slid), so the caller can drop the discarded tokens too."""

    logits: np.ndarray
    shifts: tuple[Shift, ...] = ()

    @property
    def n_discarded(self) -> int:
        return sum(s.n_discarded for s in self.shifts)


@dataclass
class State:
    """One sequence's KV cache and scratch buffers."""

    cache: KVCache
    workspace: _blocks.Workspace
    pool: BufferPool
    n_threads: int
    _arrays: dict

    def close(self) -> None:
        for name, arr in self._arrays.items():
            if name not in ("k_cache", "v_cache", "prof", "tokens", "mm_scratch"):
                self.pool.release(arr)
        self._arrays = {}
        self.cache.close()


class DecoderModel:
    """Base class; subclasses load their layers and run their block in ``_block``."""

    arch = ""

    def __init__(self, config: ModelConfig, tensors: dict[str, TensorData]):
        self.config = config
        self._tensors = tensors
        self.token_embd = self._weight("token_embd.weight", (config.vocab_size, config.n_embd))
        if config.tie_embeddings or "output.weight" not in tensors:
            self.output = self.token_embd
        else:
            self.output = self._weight("output.weight", (config.vocab_size, config.n_embd))
        self.output_norm_w = self._vector("output_norm.weight", config.n_embd)
        self.output_norm_b = self._vector("output_norm.bias", config.n_embd, required=False)
        self.layers: list[_blocks.Layer] = [self._layer(i) for i in range(config.n_layer)]

    # -- loading helpers --------------------------------------------------------------
    def _tensor(self, name: str) -> TensorData:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelFormatError(f"the {self.arch} model needs tensor {name!r}, which is missing",
                                   key=name) from None

    def _weight(self, name: str, shape: tuple[int, int], required: bool = True) -> Weight | None:
        if not required and name not in self._tensors:
            return None
        t = self._tensor(name)
        if tuple(t.shape) != tuple(shape):
            raise ModelFormatError(f"expected shape {shape}, found {tuple(t.shape)}", key=name)
        return Weight(int(t.type), tuple(shape), t.data)

    def _vector(self, name: str, n: int, required: bool = True) -> np.ndarray | None:
        if not required and name not in self._tensors:
            return None
        t = self._tensor(name)
        if int(np.prod(t.shape)) != n:
            raise ModelFormatError(f"expected {n} values, found shape {tuple(t.shape)}", key=name)
        if t.type == GGMLType.F32:
            return np.ascontiguousarray(t.data, dtype=np.float32).reshape(n)
        # Norm weights and biases are tiny: a float32 copy costs nothing and keeps the
        # block kernels to one vector type.
        return Weight(int(t.type), (1, n), t.data).dequantize().reshape(n)

    def _layer(self, i: int) -> _blocks.Layer:  # pragma: no cover - abstract
        raise NotImplementedError

    def _block(self, layer: _blocks.Layer, ws: _blocks.Workspace, i: int, pos0: int, n: int,
               n_threads: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- per-session state --------------------------------------------------------------
    def new_state(self, *, capacity: int | None = None, max_tokens: int | None = None,
                  n_threads: int = 1, pool: BufferPool | None = None,
                  overflow: str = "error", n_keep: int = 0) -> State:
        """Buffers for one sequence (``n_threads`` is used as given: resolve it first)."""
        c = self.config
        capacity = c.n_ctx if capacity is None else min(int(capacity), c.n_ctx)
        max_tokens = min(capacity, DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens))
        pool = default_pool() if pool is None else pool
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
        cache = KVCache(c.n_layer, c.n_kv_head, capacity, c.head_dim, pool=pool,
                        overflow=overflow, n_keep=n_keep,
                        positional="learned" if c.learned_positions else "rotary")
        mm_bytes = max(_blocks.scratch_bytes(w, max_tokens) for w in self._matrices())
        arrays = {
            "x": pool.acquire((max_tokens, c.n_embd)),
            "xb": pool.acquire((max_tokens, c.n_embd)),
            "qkv": pool.acquire((max_tokens, q_dim + 2 * kv_dim)),
            "att": pool.acquire((max_tokens, q_dim)),
            "h": pool.acquire((max_tokens, c.n_hidden)),
            "h2": pool.acquire((max_tokens, c.n_hidden)),
            "logits": pool.acquire((c.vocab_size,)),
            "att_scratch": pool.acquire((_blocks.attention_scratch_size(capacity, 1),)),
            "mm_scratch": np.zeros(max(mm_bytes, 64), dtype=np.uint8),
            "tokens": np.zeros(max_tokens, dtype=np.int32),
            "prof": np.zeros(len(_blocks.OPS), dtype=np.float64),
            "k_cache": cache.k,
            "v_cache": cache.v,
        }
        ws = _blocks.Workspace(
            arrays, max_tokens=max_tokens, n_embd=c.n_embd, n_hidden=c.n_hidden,
            n_head=c.n_head, n_kv_head=c.n_kv_head, head_dim=c.head_dim, vocab=c.vocab_size,
            capacity=capacity, n_layer=c.n_layer, norm_eps=c.norm_eps, mm_scratch_bytes=mm_bytes)
        return State(cache, ws, pool, int(n_threads), arrays)

    def _matrices(self) -> list[Weight]:
        out = [self.output]
        for layer in self.layers:
            out += [w for w in (layer.wqkv, layer.wq, layer.wk, layer.wv, layer.wo,
                                layer.w_gate, layer.w_up, layer.w_down) if w is not None]
        return out

    # -- forward ----------------------------------------------------------------------
    def forward(self, state: State, tokens: Sequence[int], *, all_logits: np.ndarray | None = None,
                profiler=None) -> Forward:
        """Run ``tokens`` through the model after what the cache already holds.

        Returns a :class:`Forward`: the logits of the last position (a view of the
        workspace's buffer, valid until the next call) and the shifts a sliding cache made
        (the moved keys are already re-rotated). With ``all_logits`` ((len(tokens), vocab)
        float32), every position's logits are written there too.
        """
        ws, cache, nt = state.workspace, state.cache, state.n_threads
        total = len(tokens)
        if total == 0:
            raise ShapeError("forward needs at least one token")
        done = 0
        shifts: tuple[Shift, ...] = ()
        while done < total:
            n = min(ws.max_tokens, total - done)
            pos0, shift = cache.reserve(n)
            if shift is not None:
                self.rotate_cached_keys(cache, *shift)
                shifts += (shift,)
            ws.set_tokens(tokens, done, n)
            if profiler is None:
                self._embed(ws, n, pos0)
                for i, layer in enumerate(self.layers):
                    self._block(layer, ws, i, pos0, n, nt)
            else:
                self._forward_profiled(ws, n, pos0, nt, profiler)
            cache.commit(n)
            if all_logits is not None:
                self._head(ws, 0, n, nt, all_logits[done:done + n])
            done += n
        self._head(ws, n - 1, 1, nt, None, profiler)
        return Forward(ws.arrays["logits"], shifts)

    def _embed(self, ws: _blocks.Workspace, n: int, pos0: int) -> None:
        _blocks.embed(self.token_embd, ws, n, pos0, None, self.config.embed_scale)

    def _head(self, ws, row0, n_rows, nt, out, profiler=None) -> None:
        args = (self.output, ws, row0, n_rows, nt, self.output_norm_w, self.output_norm_b,
                self.arch != "gpt2", self.config.final_logit_softcap, out)
        if profiler is None:
            _blocks.lm_head(*args)
        else:
            with profiler.span("lm_head"):
                _blocks.lm_head(*args)

    def _forward_profiled(self, ws, n, pos0, nt, profiler) -> None:
        """The same forward pass, timing each step of each layer (the fused blocks time
        their own steps in C) and measuring what each layer call allocates."""
        prof = ws.arrays["prof"]
        meter = profiler.alloc_meter
        with profiler.span("embed"):
            self._embed(ws, n, pos0)
        ws.profiling = True
        try:
            for i, layer in enumerate(self.layers):
                prof[:] = 0.0
                if meter is not None:
                    meter.begin()
                start = time.perf_counter_ns()
                self._block(layer, ws, i, pos0, n, nt)
                nbytes = meter.end() if meter is not None else 0
                steps = [k for k in range(BLOCK_STEPS) if prof[k] > 0]
                profiler.record_block(i, [_blocks.OPS[k] for k in steps], prof[steps], start)
                if nbytes:
                    profiler.record("layer_call", layer=i, start_ns=start, dur_ns=0,
                                    alloc_bytes=nbytes)
        finally:
            ws.profiling = False

    def rotate_cached_keys(self, cache: KVCache, start: int, count: int, delta: int) -> None:
        """Re-position ``count`` cached keys from slot ``start`` by ``delta`` positions.

        Only rotary models can do this (a shifted cache keeps relative positions right);
        models with learned absolute positions cannot, and the cache refuses to shift them.
        """
        raise NotImplementedError(f"{self.arch} keys cannot be re-positioned")
