"""Continuous batching: one engine thread owns the model and advances every running sequence
by one step at a time.

Requests join the running set whenever a slot is free and leave it as soon as they finish, are
cancelled or run out of time, all between two steps. A prompt is read in chunks of at most
``prefill_chunk`` tokens per step, interleaved with the decode steps of the other sequences,
so a long prompt neither stalls them nor waits for them. A new request takes the free slot whose
cached tokens share the longest prefix with its prompt (a chat's next turn, a shared system
prompt) and runs only the rest. The waiting queue is bounded: :meth:`Scheduler.submit` raises
:class:`QueueFullError` when it is full, and the server answers 503 with ``Retry-After``.

Everything the engine thread reports goes through the request's ``sink`` callback, called on
the engine thread: one :class:`~smallmind.serve._backend.Emitted` per produced text, then a
:class:`Finished` (or a :class:`Failed`). After each round of sink calls (a step's events) it
calls ``flush``, if given, so sinks may buffer events and hand a whole step over at once. A
step's events are flushed as the next step's forward pass starts its layers (``run_step``'s
``on_compute``), or at once when no step follows: the event loop that wakes for them then
works while the layers run without the GIL, not while this thread's Python between two steps
(sampling, the next step's plan and inputs) needs the GIL. (A ``step`` given in place of
``run_step``, as tests do, has its events flushed after it.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._backend import Backend, Emitted, Request, Slot, run_step

_log = logging.getLogger("smallmind.serve")

__all__ = ["Event", "Failed", "Finished", "Handle", "QueueFullError", "Scheduler"]


class QueueFullError(Exception):
    """The waiting queue is full; ``retry_after`` is a suggested wait in seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" | "length" | "cancelled" | "timeout"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Emitted | Finished | Failed


class Metrics(Protocol):
    def step(self, batch_size: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def finished(self, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None: ...


class Handle:
    """A submitted request, as the scheduler tracks it. ``cancel()`` is thread-safe."""

    def __init__(
        self, request: Request, sink: Callable[[Event], None], deadline: float, queue_deadline: float
    ):
        self.request = request
        self.sink = sink
        self.deadline = deadline
        self.queue_deadline = queue_deadline
        self.t_submit = time.monotonic()
        self.cancelled = False
        self.slot: Slot | None = None
        self.cached_tokens = 0
        self.admitted = False
        self.completion_tokens = 0
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Runs requests on ``parallel`` slots of one engine, from one thread (see the module doc).

    ``timeout`` is the longest a request may take from submission (seconds): one generating
    then stops with ``finish_reason="length"`` and keeps what it produced. ``queue_timeout``
    (default: ``timeout``) is the longest it may wait for a slot; past it, it ends with
    ``finish_reason="timeout"`` and nothing generated.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        parallel: int = 4,
        max_queue: int = 64,
        prefill_chunk: int = 128,
        timeout: float = 600.0,
        queue_timeout: float | None = None,
        metrics: Metrics | None = None,
        step: Callable[[Sequence[tuple[Slot, int]]], list] | None = None,
        flush: Callable[[], None] | None = None,
    ):
        for name, value in (("parallel", parallel), ("prefill_chunk", prefill_chunk)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(max_queue) < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        for name, limit in (("timeout", timeout), ("queue_timeout", queue_timeout)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{name} must be > 0, got {limit}")
        self.backend = backend
        self.parallel = int(parallel)
        self.max_queue = int(max_queue)
        self.prefill_chunk = int(prefill_chunk)
        self.timeout = float(timeout)
        self.queue_timeout = min(float(queue_timeout or timeout), self.timeout)
        self.metrics = metrics
        self._step = step
        self._flush = flush
        self._slots: list[Slot] = []  # created on first use: each holds a full KV cache
        self._free: list[Slot] = []  # least recently used first
        self._running: list[Handle] = []
        self._waiting: deque[Handle] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # set if the engine thread died

    # -- public, any thread ---------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="smallmind-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every request, end the engine thread and free the caches."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: Request, sink: Callable[[Event], None], timeout: float | None = None) -> Handle:
        """Queue ``request``; events go to ``sink`` on the engine thread.

        Raises :class:`QueueFullError` when ``max_queue`` requests already wait."""
        limit = self.timeout if timeout is None else min(float(timeout), self.timeout)
        now = time.monotonic()
        handle = Handle(request, sink, now + limit, now + min(limit, self.queue_timeout))
        with self._cond:
            if self._stopping or self.error is not None:
                raise RuntimeError("the scheduler is not running")
            free_slots = self.parallel - len(self._running)
            if len(self._waiting) >= self.max_queue + max(free_slots, 0):
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting", retry_after=self._retry_after()
                )
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def wake(self) -> None:
        """Make the engine thread look at cancellations now (it also does at every step)."""
        with self._cond:
            self._cond.notify_all()

    # -- engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        break
                    self._drop_finished_waiting()
                    self._admit()
                    if not self._running:
                        self._flush_events()  # of the requests dropped above
                        self._cond.wait(timeout=self._next_deadline_in())
                        continue
                self._run_one_step()  # flushes the events so far as its forward pass starts
        except BaseException as exc:  # report it to every request rather than leave them hanging
            self.error = exc
            raise
        finally:
            with self._cond:
                left = list(self._running) + list(self._waiting)
                self._running.clear()
                self._waiting.clear()
            for h in left:
                self._end(h, Failed(self.error) if self.error else self._finished(h, "cancelled"))
            self._flush_events()
            for slot in self._slots:
                slot.close()

    def _flush_events(self) -> None:
        if self._flush is not None:
            try:
                self._flush()
            except Exception as exc:  # noqa: BLE001  as for a sink: the engine thread goes on
                _log.warning("dropping events: flush raised %r", exc)

    def _next_deadline_in(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, min(h.queue_deadline for h in self._waiting) - time.monotonic()) + 0.01

    def _drop_finished_waiting(self) -> None:
        now = time.monotonic()
        for h in [h for h in self._waiting if h.cancelled or now >= h.queue_deadline]:
            self._waiting.remove(h)
            self._end(h, self._finished(h, "cancelled" if h.cancelled else "timeout"))

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.parallel:
            h = self._waiting.popleft()
            slot = self._take_slot(h.request.prompt)
            h.slot = slot
            h.cached_tokens = slot.start(h.request)
            h.admitted = True
            self._running.append(h)

    def _take_slot(self, prompt: list[int]) -> Slot:
        """The free slot sharing the longest prefix with ``prompt``, else the least recently used
        (a new one while fewer than ``parallel`` exist)."""
        best, best_len = None, 0
        for slot in self._free:
            n = slot.common_prefix(prompt)
            if n > best_len:
                best, best_len = slot, n
        if best is None:
            if len(self._slots) < self.parallel:
                best = self.backend.new_slot()
                self._slots.append(best)
                return best
            best = self._free[0]
        self._free.remove(best)
        return best

    def _run_one_step(self) -> None:
        now = time.monotonic()
        batch: list[Handle] = []
        for h in list(self._running):
            if h.cancelled:
                self._release(h, "cancelled")
            elif now >= h.deadline:
                self._release(h, "length")
            else:
                batch.append(h)
        if not batch:
            self._flush_events()
            return
        # The prefill budget goes to the oldest prompts first, so the first to come is first
        # served; a prompt left without budget sits this step out.
        budget = self.prefill_chunk
        stepped: list[Handle] = []
        work: list[tuple[Slot, int]] = []
        for h in batch:
            assert h.slot is not None
            pending = h.slot.pending_prompt
            if not pending:
                share = 1
            elif budget > 0:
                share = budget
                budget -= min(budget, pending)
            else:
                continue
            stepped.append(h)
            work.append((h.slot, share))
        if self.metrics is not None:
            self.metrics.step(len(work))
        flushed = False

        def on_compute() -> None:
            nonlocal flushed
            flushed = True
            self._flush_events()

        results = run_step(work, on_compute) if self._step is None else self._step(work)
        for h, result in zip(stepped, results, strict=False):
            if result is None:
                continue
            if isinstance(result, BaseException):
                assert h.slot is not None
                h.slot.reset()
                self._release(h, None, Failed(result))
                continue
            if result.token is not None:
                h.completion_tokens += 1
                if h.first_token_at is None:
                    h.first_token_at = time.monotonic()
                    if self.metrics is not None:
                        self.metrics.first_token(h.first_token_at - h.t_submit)
            if result.text or result.token is not None:  # the finish reason goes in Finished
                last = result.finish_reason is not None
                self._send(h, Emitted(result.token, result.text, logprob=result.logprob) if last else result)
            if result.finish_reason is not None:
                self._release(h, result.finish_reason)
        if not flushed:  # no forward pass ran (or a custom step's): this step's events go now
            self._flush_events()

    def _release(self, h: Handle, reason: str | None, event: Event | None = None) -> None:
        slot = h.slot
        assert slot is not None
        slot.cancel()
        with self._cond:
            self._running.remove(h)
            self._free.append(slot)
        h.slot = None
        self._end(h, event if event is not None else self._finished(h, reason or "stop"))

    def _finished(self, h: Handle, reason: str) -> Finished:
        return Finished(reason, len(h.request.prompt), h.completion_tokens, h.cached_tokens)

    def _end(self, h: Handle, event: Event) -> None:
        if self.metrics is not None and isinstance(event, Finished):
            ran = event.prompt_tokens - event.cached_tokens if h.admitted else 0
            self.metrics.finished(ran, event.completion_tokens, event.finish_reason)
        self._send(h, event)

    @staticmethod
    def _send(h: Handle, event: Event) -> None:
        try:
            h.sink(event)
        except Exception as exc:  # noqa: BLE001  a failing sink must not stop the engine thread
            _log.warning("dropping an event: the request's sink raised %r", exc)

    def _retry_after(self) -> int:
        return max(1, min(60, int(len(self._waiting) / max(self.parallel, 1)) + 1))
