"""Where generation spends its time and memory, per operation and per layer.

>>> import smallmind
>>> with smallmind.profile() as prof:                         # doctest: +SKIP
...     engine.generate("ROMEO:", max_new_tokens=64)
>>> print(prof.table())                                       # doctest: +SKIP
>>> prof.to_chrome_trace("trace.json")   # open in https://ui.perfetto.dev or chrome://tracing

``profile()`` installs a :class:`Profiler` as the current one for the ``with`` block (a
context variable, so it is per thread and per asyncio task). Code that wants to be
profiled asks :func:`current_profiler` once per call (``None`` when nobody profiles, and
then it does no timing at all) and reports events with :meth:`Profiler.record`,
:meth:`Profiler.record_block`, :meth:`Profiler.span` or :meth:`Profiler.overhead`.

Events do not overlap, so they add up: the table's rows are the operations (each layer
step, embed, lm_head, sampling), ``python.forward`` (the interpreter's time around the
steps of a forward pass), ``profiler`` (turning a forward pass's step timings into events),
and ``untracked`` (what no event covers: the generate loop, the tokenizer, the rest of the
profiler), and they sum to the wall time of the ``with`` block.
A ``profile()`` inside another one collects its own events and, when it exits, also hands
them to the enclosing profiler.
"""
from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from pathlib import Path

import numpy as np

from .errors import ShapeError

__all__ = ["profile", "Profiler", "current_profiler", "AllocMeter"]

_CURRENT: ContextVar[Profiler | None] = ContextVar("smallmind_profiler", default=None)

# (op, layer or None, start_ns, dur_ns, alloc_bytes, tokens): a tuple per event keeps
# record() to one allocation and one list append.
Event = tuple[str, "int | None", int, int, int, int]

_SORT_KEYS = ("time", "calls", "mean", "alloc", "name")
_GROUPINGS = ("op", "kind", "layer", "op_layer")


def current_profiler() -> Profiler | None:
    """The profiler of the innermost active ``profile()`` block, or None."""
    return _CURRENT.get()


def profile(*, track_alloc: bool = True) -> Profiler:
    """A new :class:`Profiler`; use it as ``with smallmind.profile() as prof:``.

    ``track_alloc`` turns on :mod:`tracemalloc` for the block (unless it already runs) so
    events can carry the bytes they allocated. Tracing slows Python-level allocation, so
    use ``track_alloc=False`` when only the timings matter.
    """
    return Profiler(track_alloc=track_alloc)


class AllocMeter:
    """Bytes allocated by spans of code, measured with :mod:`tracemalloc`.

    numpy reports its array buffers to tracemalloc, so temporaries created by numpy
    count too; memory malloc'ed directly by C code does not. A span's figure is the
    high-water mark above its starting point: the largest amount it held at once, a
    lower bound on what it allocated in total (two 1 KB arrays created and freed one
    after the other read as 1 KB). Spans nest: ``begin()`` / ``end()`` work like a stack.
    """

    def __init__(self) -> None:
        self._owns_tracing = False
        self._marks: list[int] = []   # traced bytes when each open span began
        self._peaks: list[int] = []   # highest peak seen so far inside each open span

    def start(self) -> None:
        """Start tracemalloc unless it already runs (then :meth:`stop` leaves it on)."""
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            self._owns_tracing = True

    def stop(self) -> None:
        if self._owns_tracing:
            tracemalloc.stop()
            self._owns_tracing = False
        self._marks.clear()
        self._peaks.clear()

    @property
    def tracing(self) -> bool:
        return tracemalloc.is_tracing()

    def begin(self) -> None:
        current, peak = tracemalloc.get_traced_memory()
        if self._peaks:  # the enclosing span keeps the peak that the reset below erases
            self._peaks[-1] = max(self._peaks[-1], peak)
        tracemalloc.reset_peak()
        self._marks.append(current)
        self._peaks.append(current)

    def end(self) -> int:
        """Close the innermost span; returns its bytes (0 when tracing is off)."""
        if not self._marks:
            raise RuntimeError("AllocMeter.end() without a matching begin()")
        current, peak = tracemalloc.get_traced_memory()
        mark = self._marks.pop()
        peak = max(self._peaks.pop(), peak)
        if self._peaks:
            self._peaks[-1] = max(self._peaks[-1], peak)
        return max(peak - mark, 0)


class Profiler:
    """Collects timed events; aggregates them into tables, summaries and Chrome traces.

    Times are ``time.perf_counter_ns()`` values. Attributes: ``alloc_meter`` (an
    :class:`AllocMeter`, or None when not tracking allocations), ``total_ms`` (summed
    event time), ``wall_ms`` (time spent inside ``with`` blocks) and ``tokens``.
    """

    def __init__(self, *, track_alloc: bool = True) -> None:
        self._events: list[Event] = []
        self.alloc_meter: AllocMeter | None = AllocMeter() if track_alloc else None
        self._context_token: Token[Profiler | None] | None = None
        self._parent: Profiler | None = None
        self._handed_up = 0            # events already given to the parent
        self._entered_ns = 0
        self._wall_ns = 0
        self._pid = os.getpid()
        self._tid = threading.get_native_id()

    # -- collecting -----------------------------------------------------------------------

    def __enter__(self) -> Profiler:
        if self._context_token is not None:
            raise RuntimeError("this Profiler is already active; use a new smallmind.profile()")
        self._parent = _CURRENT.get()
        self._context_token = _CURRENT.set(self)
        self._tid = threading.get_native_id()
        if self.alloc_meter is not None:
            self.alloc_meter.start()
        self._entered_ns = time.perf_counter_ns()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._wall_ns += time.perf_counter_ns() - self._entered_ns
        if self.alloc_meter is not None:
            self.alloc_meter.stop()
        if self._context_token is not None:
            _CURRENT.reset(self._context_token)
        self._context_token = None
        if self._parent is not None:
            self._parent._events.extend(self._events[self._handed_up:])
            self._handed_up = len(self._events)
            self._parent = None

    @property
    def active(self) -> bool:
        return self._context_token is not None

    def record(self, op: str, *, layer: int | None = None, start_ns: int, dur_ns: int,
               alloc_bytes: int = 0, tokens: int = 0) -> None:
        """Add one event: ``op`` ran (on ``layer``, if any) from ``start_ns`` for ``dur_ns``."""
        self._events.append((op, layer, start_ns, dur_ns, alloc_bytes, tokens))

    def record_block(self, layer: int | None, op_names: Sequence[str], durations_ns: np.ndarray,
                     start_ns: int) -> None:
        """Add events for steps a kernel timed itself and ran back to back from ``start_ns``.

        ``durations_ns[i]`` is the duration of ``op_names[i]``; a fused kernel hands these
        back as one array instead of calling :meth:`record` per step.
        """
        durations = np.asarray(durations_ns).reshape(-1).tolist()
        if len(durations) != len(op_names):
            raise ShapeError(f"record_block: {len(op_names)} op_names but "
                             f"{len(durations)} durations_ns")
        t = int(start_ns)
        append = self._events.append
        for name, dur in zip(op_names, durations, strict=False):
            dur = int(dur)
            append((name, layer, t, dur, 0, 0))
            t += dur

    @contextmanager
    def span(self, op: str, *, layer: int | None = None, tokens: int = 0) -> Iterator[None]:
        """Time (and, when tracking, measure the allocations of) the enclosed code as one event."""
        meter = self.alloc_meter
        if meter is not None:
            meter.begin()
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            dur = time.perf_counter_ns() - start
            nbytes = meter.end() if meter is not None else 0
            self.record(op, layer=layer, start_ns=start, dur_ns=dur, alloc_bytes=nbytes,
                        tokens=tokens)

    @contextmanager
    def overhead(self, op: str, *, layer: int | None = None) -> Iterator[None]:
        """Record the time of the enclosed code that the events recorded inside it do not
        cover (the Python around timed kernels), so that the two add up without overlap.

        The event's bytes are the block's allocation high-water mark less what the inner
        events report. In a trace it is drawn at the block's start.
        """
        meter = self.alloc_meter
        if meter is not None:
            meter.begin()
        first = len(self._events)
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            dur = time.perf_counter_ns() - start
            nbytes = meter.end() if meter is not None else 0
            inner = self._events[first:]
            self.record(op, layer=layer, start_ns=start,
                        dur_ns=max(dur - sum(e[3] for e in inner), 0),
                        alloc_bytes=max(nbytes - sum(e[4] for e in inner), 0))

    def clear(self) -> None:
        self._events.clear()
        self._handed_up = 0
        self._wall_ns = 0

    # -- reading --------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """A copy of the raw events: (op, layer, start_ns, dur_ns, alloc_bytes, tokens)."""
        return list(self._events)

    @property
    def total_ms(self) -> float:
        return sum(e[3] for e in self._events) / 1e6

    @property
    def wall_ms(self) -> float:
        running = time.perf_counter_ns() - self._entered_ns if self.active else 0
        return (self._wall_ns + running) / 1e6

    @property
    def tokens(self) -> int:
        return sum(e[5] for e in self._events)

    def summary(self, sort: str = "time", by: str = "op") -> list[dict]:
        """One dict per group: name, op, layer, calls, total_ms, percent, mean_us,
        alloc_bytes, bytes_per_call, tokens; sorted by ``sort`` (time, calls, mean, alloc,
        name); grouped ``by`` op, kind (the op name up to its first ".", so "matmul.qkv"
        and "matmul.ffn" add up), layer or op_layer."""
        if by not in _GROUPINGS:
            raise ValueError(f"by must be one of {_GROUPINGS}, got {by!r}")
        if sort not in _SORT_KEYS:
            raise ValueError(f"sort must be one of {_SORT_KEYS}, got {sort!r}")
        groups: dict[tuple[str | None, int | None], list[int]] = {}
        for op, layer, _start, dur, nbytes, tokens in self._events:
            key: tuple[str | None, int | None]
            if by == "op":
                key = (op, None)
            elif by == "kind":
                key = (_kind(op), None)
            elif by == "layer":
                key = (None, layer)
            else:
                key = (op, layer)
            acc = groups.get(key)
            if acc is None:
                acc = groups[key] = [0, 0, 0, 0]
            acc[0] += 1
            acc[1] += dur
            acc[2] += nbytes
            acc[3] += tokens
        total_ns = sum(acc[1] for acc in groups.values())
        rows = []
        for (group_op, layer), (calls, dur, nbytes, tokens) in groups.items():
            rows.append({
                "name": _group_name(group_op, layer, by),
                "op": group_op,
                "layer": layer,
                "calls": calls,
                "total_ms": dur / 1e6,
                "percent": 100.0 * dur / total_ns if total_ns else 0.0,
                "mean_us": dur / calls / 1e3,
                "alloc_bytes": nbytes,
                "bytes_per_call": nbytes / calls,
                "tokens": tokens,
            })
        order = {
            "time": lambda r: (-r["total_ms"], r["name"]),
            "calls": lambda r: (-r["calls"], r["name"]),
            "mean": lambda r: (-r["mean_us"], r["name"]),
            "alloc": lambda r: (-r["alloc_bytes"], r["name"]),
            "name": lambda r: _natural_key(r["name"]),
        }[sort]
        rows.sort(key=order)
        return rows

    def table(self, sort: str = "time", by: str = "op", limit: int | None = None) -> str:
        """A markdown table of :meth:`summary` (the hottest rows first by default).

        After a ``with`` block the rows end with ``untracked`` (wall time no event covers)
        and ``**wall**``, percentages are shares of the wall time, and the rows add up to
        it. Otherwise (events recorded by hand) the last row is the events' ``**total**``.
        """
        rows = self.summary(sort=sort, by=by)
        shown = rows if limit is None else rows[:limit]
        tracked = sum(r["total_ms"] for r in rows)
        calls = sum(r["calls"] for r in rows)
        nbytes = sum(r["alloc_bytes"] for r in rows)
        wall = self.wall_ms
        against_wall = wall > 0 and tracked <= wall
        whole = wall if against_wall else tracked

        def line(name: str, n: int | None, ms: float, alloc: float | None) -> list[str]:
            pct = f"{100.0 * ms / whole:.1f}%" if whole else "0.0%"
            mean = f"{ms * 1e3 / n:.2f}" if n else "-"
            return [name, "-" if n is None else f"{n:,}", f"{ms:.3f}", pct, mean,
                    "-" if alloc is None else _format_bytes(alloc),
                    _format_bytes(alloc / n) if n and alloc is not None else "-"]

        first = {"op": "op", "kind": "op kind", "layer": "layer", "op_layer": "op @ layer"}[by]
        header = [first, "calls", "total ms", "% total", "mean µs", "alloc", "alloc/call"]
        body = [line(r["name"], r["calls"], r["total_ms"], r["alloc_bytes"]) for r in shown]
        if len(shown) < len(rows):
            rest = rows[len(shown):]
            body.append(line(f"({len(rest)} more)", sum(r["calls"] for r in rest),
                             sum(r["total_ms"] for r in rest), sum(r["alloc_bytes"] for r in rest)))
        if against_wall:
            body.append(line("untracked", None, wall - tracked, None))
            body.append(line("**wall**", calls, wall, nbytes))
        else:
            body.append(line("**total**", calls, tracked, nbytes))
        widths = [max(len(header[i]), *(len(row[i]) for row in body)) for i in range(len(header))]
        lines = ["| " + " | ".join(h.ljust(w) if i == 0 else h.rjust(w)
                                   for i, (h, w) in enumerate(zip(header, widths, strict=False))) + " |",
                 "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":")
                                for i, w in enumerate(widths)) + "|"]
        for row in body:
            lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                           for i, (c, w) in enumerate(zip(row, widths, strict=False))) + " |")
        tokens = self.tokens
        footer = f"{len(self._events):,} events, wall {wall:.1f} ms"
        if tokens:
            footer += f", {tokens:,} token{'' if tokens == 1 else 's'}"
            if wall > 0:
                footer += f" ({tokens / (wall / 1e3):,.1f} tok/s)"
        if self.alloc_meter is not None and wall > 0:
            footer += ("\nallocation tracking (tracemalloc) slows Python code, so it inflates "
                       "python.forward and untracked; profile(track_alloc=False) times without it")
        return "\n".join(lines) + "\n\n" + footer

    def trace_events(self) -> list[dict]:
        """The events in Chrome's trace-event format ("X" complete events, times in µs)."""
        origin = min((e[2] for e in self._events), default=0)
        out: list[dict] = [
            {"name": "process_name", "ph": "M", "pid": self._pid, "tid": self._tid,
             "args": {"name": "smallmind"}},
            {"name": "thread_name", "ph": "M", "pid": self._pid, "tid": self._tid,
             "args": {"name": "generate"}},
        ]
        for op, layer, start, dur, nbytes, tokens in sorted(self._events, key=lambda e: e[2]):
            args: dict[str, object] = {"layer": layer, "bytes": nbytes}
            if tokens:
                args["tokens"] = tokens
            out.append({
                "name": op if layer is None else f"{op} [{layer}]",
                "cat": _kind(op),
                "ph": "X",
                "ts": (start - origin) / 1e3,
                "dur": dur / 1e3,
                "pid": self._pid,
                "tid": self._tid,
                "args": args,
            })
        return out

    def to_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Write a JSON trace that Perfetto (ui.perfetto.dev) and chrome://tracing load."""
        path = Path(path)
        with path.open("w", encoding="utf-8") as f:
            json.dump({"traceEvents": self.trace_events(), "displayTimeUnit": "ms",
                       "otherData": {"producer": "smallmind.profiler"}}, f)
        return path

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return (f"<Profiler {state}: {len(self._events)} events, {self.total_ms:.3f} ms, "
                f"{self.tokens} tokens>")


def _kind(op: str) -> str:
    # "matmul.qkv" and "matmul.ffn_up" share the category "matmul"
    return op.split(".", 1)[0]


def _group_name(op: str | None, layer: int | None, by: str) -> str:
    if by in ("op", "kind"):
        return str(op)
    layer_name = "-" if layer is None else str(layer)
    return layer_name if by == "layer" else f"{op} @ {layer_name}"


def _natural_key(name: str) -> tuple:
    # "attention @ 10" after "attention @ 9"; "-" (no layer) sorts first
    parts = name.replace("@", " ").split()
    return tuple((-1, 0, "") if p == "-" else (0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in parts)


def _format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} GiB"  # pragma: no cover
