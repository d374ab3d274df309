"""What every decoder-only model shares: weights -> kernel objects, per-session state, forward.

A model is built from ``(ModelConfig, {name: TensorData})`` and knows nothing about files.
Its tensors are those of its architecture's table (:mod:`.spec`). Its forward pass is
embed -> the layer's steps for every layer -> head; the layer is a table of named Cython
steps in the model's own block file (``_gpt2.pyx``, ``_llama.pyx``, ``_gemma3.pyx``), run
over a :class:`State` holding the KV cache and a workspace of preallocated buffers, so the
decode loop allocates nothing. :meth:`DecoderModel.forward_batch` runs the rows of several
sequences (each with its own State) through the weights at once, in a :class:`BatchState`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np

from .._core._matmul import Weight
from .._core._pool import BufferPool, default_pool
from ..errors import ModelFormatError, ShapeError
from ..kv_cache import KVCache, Shift
from ..tensors import GGMLType, TensorData
from . import _head, _layer
from .config import ModelConfig
from .spec import TensorSpec, global_specs, layer_specs

#: Prompt positions processed per call of the layers; bounds the workspace size.
DEFAULT_MAX_TOKENS = 128


#: Rows from which a float matmul takes the packed kernel (see _matmul.matmul_split).
PACKED_MIN_ROWS = _layer.packed_min_rows_count()


class Forward(NamedTuple):
    """What :meth:`DecoderModel.forward` did: the last position's logits (a view of the
    workspace, valid until the next call), the shifts of a sliding cache (oldest first;
    empty unless the window slid), so the caller can drop the discarded tokens too, and
    ``peak``: the first index of the largest logit, found while the head computed them (so
    a greedy choice needs no pass over them), or -1 when not known (a NaN, all -inf, or a
    head weight whose layout is not cut into units)."""

    logits: np.ndarray
    shifts: tuple[Shift, ...] = ()
    peak: int = -1

    @property
    def n_discarded(self) -> int:
        return sum(s.n_discarded for s in self.shifts)


@dataclass
class State:
    """One sequence's KV cache and scratch buffers."""

    cache: KVCache
    workspace: _layer.Workspace
    pool: BufferPool
    n_threads: int
    _arrays: dict

    def close(self) -> None:
        _release(self.pool, self._arrays)
        self._arrays = {}
        self.cache.close()


class BatchForward(NamedTuple):
    """What :meth:`DecoderModel.forward_batch` did: each sequence's last-position logits
    (row i for sequence i, a view of the batch's buffer valid until its next call), the
    shifts each sequence's sliding cache made, and ``peaks[i]``, row i's :attr:`Forward.peak`
    (intp, a view valid as long as the logits; -1 where not known)."""

    logits: np.ndarray
    shifts: tuple[tuple[Shift, ...], ...]
    peaks: np.ndarray


@dataclass
class BatchState:
    """Buffers for the rows of up to ``max_seqs`` sequences (``max_tokens`` rows in all) run
    together; no KV cache of its own: each sequence brings its :class:`State`."""

    workspace: _layer.Workspace
    pool: BufferPool
    n_threads: int
    max_seqs: int
    _arrays: dict
    _spans: np.ndarray   # (max_seqs, 2) intp: (n, pos0) of each segment, in row order
    _rows: np.ndarray    # (max_seqs,) intp: each sequence's last row
    _peaks: np.ndarray   # (max_seqs,) intp: the peak of each sequence's logits

    @property
    def capacity(self) -> int:
        """The longest KV cache a sequence in this batch may have."""
        return self.workspace.capacity

    def close(self) -> None:
        _release(self.pool, self._arrays)
        self._arrays = {}


def _release(pool: BufferPool, arrays: dict) -> None:
    for name, arr in arrays.items():
        if name not in ("k_cache", "v_cache", "tokens", "mm_scratch") and arr is not None:
            pool.release(arr)


class DecoderModel:
    """Base class. A subclass names its layer's steps (``steps``, from its block file) and
    the per-layer settings its steps read (``_layer_options``)."""

    arch = ""
    steps: _layer.Steps
    final_rmsnorm = True   # the head's norm: RMSNorm (else LayerNorm, with output_norm.bias)

    def __init__(self, config: ModelConfig, tensors: dict[str, TensorData]):
        self.config = config
        self._tensors = tensors
        bound = {s.name: self._bind(s, s.name) for s in global_specs(config)}
        # The table says which entries are matrices (Weight) and which vectors (arrays).
        self.token_embd = cast(Weight, bound["token_embd.weight"])
        # learned positions (GPT-2)
        self.position_embd = cast("Weight | None", bound.get("position_embd.weight"))
        # Not required when tied: without it the head reads the token embedding.
        output = cast("Weight | None", bound["output.weight"])
        self.output: Weight = self.token_embd if output is None else output
        self.output_norm_w = cast(np.ndarray, bound["output_norm.weight"])
        self.output_norm_b = cast("np.ndarray | None", bound.get("output_norm.bias"))
        specs = layer_specs(config)
        self.layers: list[_layer.Layer] = [self._build_layer(i, specs) for i in range(config.n_layer)]

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
            # A copy, not a view of the file map: the file pages of repacked matrices are
            # released after the repack (Weight), and every read of a norm from the map
            # faulted its neighbours back in too (the kernel maps up to 64 KiB around a fault):
            # ~29 MB of SmolLM2's file became resident again in the first forward pass.
            return np.array(t.data, dtype=np.float32, copy=True).reshape(n)
        # Norm weights and biases are tiny: a float32 copy costs nothing and keeps the
        # block kernels to one vector type.
        return Weight(int(t.type), (1, n), t.data).dequantize().reshape(n)

    def _bind(self, spec: TensorSpec, name: str) -> Weight | np.ndarray | None:
        """Tensor ``name`` as its table entry says: a matrix becomes a Weight, a vector a
        float32 array; an absent optional tensor is None."""
        if len(spec.shape) == 2:
            return self._weight(name, spec.shape, spec.required)
        return self._vector(name, spec.shape[0], spec.required)

    def _build_layer(self, i: int, specs: list[TensorSpec]) -> _layer.Layer:
        """Layer i's tensors, as its architecture's table lists them, bound for the steps."""
        c = self.config
        tensors = {s.name: self._bind(s, f"blk.{i}.{s.name}") for s in specs}
        return _layer.Layer(tensors, n_embd=c.n_embd, n_hidden=c.n_hidden,
                            q_dim=c.n_head * c.head_dim, kv_dim=c.n_kv_head * c.head_dim,
                            head_dim=c.head_dim, attn_scale=c.attn_scale or 1.0 / math.sqrt(c.head_dim),
                            **self._layer_options(i))

    def _layer_options(self, i: int) -> dict:
        """Per-layer settings beyond the tensors (rotary frequencies, attention window)."""
        return {}

    # -- per-session state --------------------------------------------------------------
    def new_state(self, *, capacity: int | None = None, max_tokens: int | None = None,
                  n_threads: int = 1, pool: BufferPool | None = None,
                  overflow: str = "error", n_keep: int = 0) -> State:
        """Buffers for one sequence (``n_threads`` is used as given: resolve it first)."""
        c = self.config
        capacity = c.n_ctx if capacity is None else min(int(capacity), c.n_ctx)
        max_tokens = min(capacity, DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens))
        pool = default_pool() if pool is None else pool
        cache = KVCache(c.n_layer, c.n_kv_head, capacity, c.head_dim, pool=pool,
                        overflow=overflow, n_keep=n_keep,
                        positional="learned" if c.learned_positions else "rotary")
        ws, arrays = self._workspace(pool, max_tokens, capacity, 1, cache.k, cache.v)
        return State(cache, ws, pool, int(n_threads), arrays)

    def new_batch(self, *, max_seqs: int, capacity: int, max_tokens: int | None = None,
                  n_threads: int = 1, pool: BufferPool | None = None) -> BatchState:
        """Buffers to run up to ``max_seqs`` sequences together (:meth:`forward_batch`), of
        ``max_tokens`` rows in all (default: max(max_seqs, DEFAULT_MAX_TOKENS)), whose KV
        caches hold up to ``capacity`` positions. Allocated once: decoding allocates nothing."""
        max_seqs = int(max_seqs)
        max_tokens = max(max_seqs, DEFAULT_MAX_TOKENS) if max_tokens is None else int(max_tokens)
        if not 1 <= max_seqs <= max_tokens:
            raise ValueError(f"max_seqs must be in [1, max_tokens={max_tokens}], got {max_seqs}")
        pool = default_pool() if pool is None else pool
        ws, arrays = self._workspace(pool, max_tokens, min(int(capacity), self.config.n_ctx),
                                     max_seqs, None, None, n_logits=max_seqs, n_threads=int(n_threads))
        return BatchState(ws, pool, int(n_threads), max_seqs, arrays,
                          np.zeros((max_seqs, 2), dtype=np.intp), np.zeros(max_seqs, dtype=np.intp),
                          np.full(max_seqs, -1, dtype=np.intp))

    def _workspace(self, pool: BufferPool, max_tokens: int, capacity: int, max_segs: int,
                   k_cache: np.ndarray | None, v_cache: np.ndarray | None,
                   n_logits: int | None = None, n_threads: int = 1) -> tuple[_layer.Workspace, dict]:
        c = self.config
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
        # the layers' products of max_tokens rows, and the head's of a row per segment on each thread
        mm_bytes = max(max(_layer.scratch_bytes(w, max_tokens) for w in self._matrices()),
                       _head.scratch_bytes(self.output, max_segs, n_threads))
        arrays: dict[str, np.ndarray | None] = {
            "x": pool.acquire((max_tokens, c.n_embd)),
            "xb": pool.acquire((max_tokens, c.n_embd)),
            "qkv": pool.acquire((max_tokens, q_dim + 2 * kv_dim)),
            "att": pool.acquire((max_tokens, q_dim)),
            "h": pool.acquire((max_tokens, c.n_hidden)),
            "h2": pool.acquire((max_tokens, c.n_hidden)),
            "logits": pool.acquire((c.vocab_size,) if n_logits is None else (n_logits, c.vocab_size)),
            "mm_scratch": np.zeros(max(mm_bytes, 64), dtype=np.uint8),
            "tokens": np.zeros(max_tokens, dtype=np.int32),
            "k_cache": k_cache,
            "v_cache": v_cache,
        }
        ws = _layer.Workspace(
            arrays, max_tokens=max_tokens, n_embd=c.n_embd, n_hidden=c.n_hidden,
            n_head=c.n_head, n_kv_head=c.n_kv_head, head_dim=c.head_dim, vocab=c.vocab_size,
            capacity=capacity, n_layer=c.n_layer, norm_eps=c.norm_eps, mm_scratch_bytes=mm_bytes,
            max_segs=max_segs)
        return ws, arrays

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
        float32), every position's logits are written there too. With a ``profiler``, every
        step of every layer is recorded, and the time spent around them as ``python.forward``.
        """
        if profiler is not None:
            with profiler.overhead("python.forward"):
                return self._forward(state, tokens, all_logits, profiler)
        return self._forward(state, tokens, all_logits, None)

    def _forward(self, state: State, tokens: Sequence[int], all_logits: np.ndarray | None,
                 profiler) -> Forward:
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
                _layer.run_layers(self.steps, self.layers, ws, pos0, n, nt)
            else:
                self._run_profiled(ws, n, pos0, nt, profiler)
            cache.commit(n)
            if all_logits is not None:
                self._head(ws, 0, n, nt, all_logits[done:done + n])
            done += n
        peak = self._head(ws, n - 1, 1, nt, None, profiler)
        return Forward(ws.arrays["logits"], shifts, peak)

    def forward_batch(self, batch: BatchState, seqs: Sequence[tuple[State, Sequence[int]]], *,
                      packed: Sequence[bool] | None = None,
                      on_compute: Callable[[], None] | None = None,
                      timings: np.ndarray | None = None) -> BatchForward:
        """Run each sequence's ``tokens`` after what its State's cache holds, all sequences'
        rows through the weights together (one pass for the batch) and each attending over
        its own cache. Returns a :class:`BatchForward`: row i of its logits is sequence i's
        last position, and ``peaks[i]`` the first index of its largest logit (found by the head
        while the row's logits were in cache, as :meth:`forward` finds its peak). ``on_compute``,
        if given, is called once the rows are in place, just
        before the layers run without the GIL: the server hands the last step's events to its
        event loop there, whose work then overlaps the pass instead of taking the GIL from
        this thread's Python in between. ``timings`` ((n_layer, 1 + len(steps)) float64) gets
        each layer's start and step durations, as ``_layer.run_batch`` records them.

        Every row comes out bit for bit as :meth:`forward` of that sequence's tokens alone
        computes it, given the same chunking: ``packed[i]`` says whether sequence i's rows
        belong to a chunk of at least :data:`PACKED_MIN_ROWS` rows alone (default: whether
        ``tokens`` is), which is what picks the float matmul kernel. The caller chunks: the
        rows must fit the batch's ``max_tokens``.
        """
        n_seqs = len(seqs)
        if not 1 <= n_seqs <= batch.max_seqs:
            raise ShapeError(f"{n_seqs} sequences for a batch of 1..{batch.max_seqs}")
        flags = ([len(t) >= PACKED_MIN_ROWS for _, t in seqs] if packed is None
                 else [bool(p) for p in packed])
        if len(flags) != n_seqs:
            raise ShapeError(f"packed: {len(flags)} flags for {n_seqs} sequences")
        if len({id(state) for state, _ in seqs}) != n_seqs:
            raise ShapeError("a sequence's State appears twice in the batch")
        ws, spans, rows = batch.workspace, batch._spans, batch._rows
        if sum(len(t) for _, t in seqs) > ws.max_tokens:
            raise ShapeError(f"the sequences hold more than the batch's {ws.max_tokens} rows")
        caches: list[_layer.Workspace] = []
        shifts: list[tuple[Shift, ...]] = [()] * n_seqs
        row = n_packed = 0
        for i in sorted(range(n_seqs), key=lambda i: not flags[i]):  # packed rows first
            state, tokens = seqs[i]
            n = len(tokens)
            if n == 0:
                raise ShapeError(f"sequence {i} has no tokens to run")
            pos0, shift = state.cache.reserve(n)
            if shift is not None:
                self.rotate_cached_keys(state.cache, *shift)
                shifts[i] = (shift,)
            ws.set_tokens(tokens, 0, n, row)
            self._embed(ws, n, pos0, row)
            spans[len(caches)] = n, pos0
            caches.append(state.workspace)
            rows[i] = row + n - 1
            row += n
            if flags[i]:
                n_packed = row
        if on_compute is not None:
            on_compute()
        _layer.run_batch(self.steps, self.layers, ws, caches, spans[:n_seqs], n_packed, batch.n_threads,
                         timings)
        for state, tokens in seqs:
            state.cache.commit(len(tokens))
        logits, peaks = batch._arrays["logits"][:n_seqs], batch._peaks[:n_seqs]
        self._head(ws, 0, n_seqs, batch.n_threads, logits, rows=rows[:n_seqs], peaks=peaks)
        return BatchForward(logits, tuple(shifts), peaks)

    def run_layer(self, i: int, ws: _layer.Workspace, pos0: int, n: int, n_threads: int) -> None:
        """Run layer ``i`` alone on the workspace (the error path uses it to find a bad layer)."""
        _layer.run_layers(self.steps, self.layers, ws, pos0, n, n_threads, None, i)

    def _embed(self, ws: _layer.Workspace, n: int, pos0: int, row0: int = 0) -> None:
        _layer.embed(self.token_embd, ws, n, pos0, self.position_embd, self.config.embed_scale, row0)

    def _head(self, ws, row0, n_rows, nt, out, profiler=None, rows=None, peaks=None) -> int:
        """The logits (see _head.lm_head); returns the peak of a single row, else -1, and
        writes each row's into ``peaks`` if given."""
        args = (self.output, ws, row0, n_rows, nt, self.output_norm_w, self.output_norm_b,
                self.final_rmsnorm, self.config.final_logit_softcap, out, rows, peaks)
        if profiler is None:
            return _head.lm_head(*args)
        with profiler.span("lm_head"):
            return _head.lm_head(*args)

    def _run_profiled(self, ws, n, pos0, nt, profiler) -> None:
        """Embed and the layers, each step timed from outside by ``run_layers``."""
        with profiler.span("embed"):
            self._embed(ws, n, pos0)
        names = self.steps.names
        timings = np.zeros((len(self.layers), 1 + len(names)))
        _layer.run_layers(self.steps, self.layers, ws, pos0, n, nt, timings)
        # Its own row: turning the timings into events costs more per token than the
        # Python of the forward pass (~0.15-0.3 ms for 30 layers, several times that
        # under allocation tracking), which python.forward would otherwise report.
        with profiler.span("profiler"):
            for i, row in enumerate(timings):
                profiler.record_block(i, names, row[1:], start_ns=int(row[0]))

    def rotate_cached_keys(self, cache: KVCache, start: int, count: int, delta: int) -> None:
        """Re-position ``count`` cached keys from slot ``start`` by ``delta`` positions.

        Only rotary models can do this (a shifted cache keeps relative positions right);
        models with learned absolute positions cannot, and the cache refuses to shift them.
        """
        raise NotImplementedError(f"{self.arch} keys cannot be re-positioned")
