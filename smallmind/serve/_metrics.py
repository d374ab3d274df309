"""Prometheus metrics of one server (its own registry, so several apps in one process, as in the
tests, do not share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    """The counters the scheduler feeds (from its engine thread) and ``/metrics`` shows."""

    def __init__(self, running: Callable[[], float], waiting: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("smallmind_requests_running", "Sequences in the running batch", registry=r).set_function(
            running
        )
        Gauge("smallmind_requests_waiting", "Sequences waiting for a slot", registry=r).set_function(waiting)
        self._generated = Counter("smallmind_tokens_generated", "Tokens generated", registry=r)
        self._prompt = Counter(
            "smallmind_prompt_tokens",
            "Prompt tokens run through the model (tokens reused from a slot's cache are not counted)",
            registry=r,
        )
        self._requests = Counter("smallmind_requests", "Finished sequences", ["finish_reason"], registry=r)
        self._ttft = Histogram(
            "smallmind_time_to_first_token_seconds",
            "From submission to the first generated token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self._batch = Histogram(
            "smallmind_batch_size",
            "Sequences advanced by one engine step",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )

    def step(self, batch_size: int) -> None:
        self._batch.observe(batch_size)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def finished(self, prompt_tokens: int, completion_tokens: int, finish_reason: str = "") -> None:
        self._prompt.inc(prompt_tokens)
        self._generated.inc(completion_tokens)
        if finish_reason:
            self._requests.labels(finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
