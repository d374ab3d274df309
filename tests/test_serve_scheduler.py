"""The continuous-batching scheduler, driven directly (no HTTP): sequences run interleaved give
the tokens they give alone, prompts are read in chunks between decode steps, prefixes are
reused, the queue is bounded, and cancellation / time limits free the slot."""

from __future__ import annotations

import threading
import time

import pytest

from smallmind import Engine
from smallmind.serve._backend import Backend, Emitted, Request, run_step
from smallmind.serve.scheduler import Failed, Finished, QueueFullError, Scheduler

WAIT_S = 30.0  # every wait below is bounded by this


@pytest.fixture(scope="module")
def backend() -> Backend:
    return Backend(Engine.default())


class Collector:
    """A sink that records events; ``wait()`` until the request finished."""

    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    def wait(self) -> Finished | Failed:
        assert self.done.wait(WAIT_S), "the request did not finish in time"
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Emitted))

    @property
    def tokens(self) -> list[int]:
        return [e.token for e in self.events if isinstance(e, Emitted) and e.token is not None]


class Gate:
    """A step function that runs the real step only when allowed to, recording each batch."""

    def __init__(self, delay: float = 0.0) -> None:
        self.open = threading.Event()
        self.open.set()
        self.delay = delay
        self.batches: list[list[tuple[int, int]]] = []  # (slot id, budget) per step

    def __call__(self, work):
        assert self.open.wait(WAIT_S)
        if self.delay:
            time.sleep(self.delay)
        self.batches.append([(id(slot), budget) for slot, budget in work])
        return run_step(work)


def greedy(backend: Backend, prompt: str, n: int, **sampling) -> Request:
    return Request(backend.encode(prompt), n, dict(sampling or {"temperature": 0.0}))


@pytest.fixture
def make(backend):
    made: list[Scheduler] = []

    def make(**kwargs) -> Scheduler:
        s = Scheduler(backend, **kwargs).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
        assert not s.alive


def test_interleaved_sequences_match_their_solo_runs(backend, make):
    engine = backend.engine
    prompts = ["ROMEO:", "JULIET:\nO", "First Citizen:\nWe are", "KING", "What, ho!"]
    params = [
        {"temperature": 0.0},
        {"temperature": 0.9, "seed": 7},
        {"temperature": 1.0, "top_p": 0.9, "seed": 3},
        {"temperature": 0.7, "seed": 11, "presence_penalty": 0.5},
        {"temperature": 0.0},
    ]
    gate = Gate()
    s = make(parallel=3, prefill_chunk=4, step=gate)
    sinks = [Collector() for _ in prompts]
    for prompt, p, sink in zip(prompts, params, sinks, strict=False):
        s.submit(Request(backend.encode(prompt), 40, p), sink)
    for prompt, p, sink in zip(prompts, params, sinks, strict=False):
        end = sink.wait()
        solo = engine.generate(prompt, max_new_tokens=40, **p)
        assert sink.tokens == solo.tokens, prompt
        assert sink.text == solo.text
        assert isinstance(end, Finished) and end.completion_tokens == len(solo.tokens)
    assert max(len(b) for b in gate.batches) == 3  # they really ran together


def test_long_prompt_is_read_in_chunks_between_decode_steps(backend, make):
    gate = Gate()
    s = make(parallel=2, prefill_chunk=8, step=gate)
    short, long = Collector(), Collector()
    s.submit(greedy(backend, "ROMEO:", 60), short)
    long_prompt = "To be, or not to be, that is the question: " * 4
    s.submit(greedy(backend, long_prompt, 5), long)
    short.wait(), long.wait()
    n_prompt = len(backend.encode(long_prompt))
    # Every step carries the short sequence's decode alongside a chunk of at most 8 prompt tokens.
    chunked = [b for b in gate.batches if len(b) == 2 and max(budget for _, budget in b) == 8]
    assert len(chunked) >= (n_prompt - 1) // 8
    assert long.text == backend.engine.generate(long_prompt, max_new_tokens=5, temperature=0).text


def test_a_free_slot_with_a_shared_prefix_is_reused(backend, make):
    s = make(parallel=2)
    first = Collector()
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak."
    s.submit(greedy(backend, prompt, 8), first)
    assert first.wait().cached_tokens == 0
    second = Collector()
    s.submit(greedy(backend, prompt + " All: Speak", 8), second)
    end = second.wait()
    assert end.cached_tokens == len(backend.encode(prompt))
    solo = backend.engine.generate(prompt + " All: Speak", max_new_tokens=8, temperature=0)
    assert second.tokens == solo.tokens


def test_a_full_queue_refuses_with_retry_after(backend, make):
    gate = Gate()
    gate.open.clear()
    s = make(parallel=1, max_queue=2, step=gate)
    sinks = [Collector() for _ in range(3)]
    for sink in sinks:  # one takes the slot, two wait
        s.submit(greedy(backend, "ROMEO:", 4), sink)
    with pytest.raises(QueueFullError) as info:
        s.submit(greedy(backend, "ROMEO:", 4), Collector())
    assert info.value.retry_after >= 1
    gate.open.set()
    assert all(sink.wait().finish_reason == "length" for sink in sinks)
    s.submit(greedy(backend, "ROMEO:", 4), Collector())  # room again


def test_cancel_frees_the_slot_at_the_next_step(backend, make):
    gate = Gate(delay=0.01)
    s = make(parallel=1, step=gate)
    victim, next_one = Collector(), Collector()
    handle = s.submit(greedy(backend, "ROMEO:", 200), victim)
    s.submit(greedy(backend, "JULIET:", 5), next_one)
    deadline = time.monotonic() + WAIT_S
    while len(victim.tokens) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    handle.cancel()
    end = victim.wait()
    assert end.finish_reason == "cancelled" and end.completion_tokens < 200
    assert next_one.wait().finish_reason == "length"
    assert s.running == 0


def test_time_limit_stops_a_running_request_and_fails_a_waiting_one(backend, make):
    gate = Gate(delay=0.01)
    s = make(parallel=1, step=gate, timeout=0.4, queue_timeout=0.2)
    running, waiting = Collector(), Collector()
    t0 = time.monotonic()
    s.submit(greedy(backend, "ROMEO:", 250), running)
    s.submit(greedy(backend, "JULIET:", 5), waiting)
    end = running.wait()
    assert end.finish_reason == "length" and 0 < end.completion_tokens < 250
    assert waiting.wait().finish_reason == "timeout"
    assert time.monotonic() - t0 < 5


def test_a_failing_sequence_does_not_stop_the_others(backend, make):
    # The step fails the bad request's row from its first step on. (Marking its slot from the
    # test thread once both slots existed raced the scheduler: 30 tokens of the default model
    # can finish before the test thread runs again.)
    bad_request = greedy(backend, "JULIET:", 30)

    def step(work):
        results = run_step(work)
        return [RuntimeError("boom") if slot._request is bad_request else r
                for (slot, _), r in zip(work, results, strict=False)]

    s = make(parallel=2, step=step)
    bad, good = Collector(), Collector()
    s.submit(greedy(backend, "ROMEO:", 30), good)
    s.submit(bad_request, bad)
    assert isinstance(bad.wait(), Failed)
    assert good.wait().finish_reason == "length"
    assert good.tokens == backend.engine.generate("ROMEO:", max_new_tokens=30, temperature=0).tokens


def test_stop_strings_and_zero_max_tokens(backend, make):
    s = make(parallel=2)
    solo = backend.engine.generate("ROMEO:", max_new_tokens=40, temperature=0).text
    stop = solo.strip()[3:6]
    sink = Collector()
    s.submit(Request(backend.encode("ROMEO:"), 40, {"temperature": 0.0}, (stop,)), sink)
    assert sink.wait().finish_reason == "stop"
    assert sink.text == solo[: solo.index(stop)]
    empty = Collector()
    s.submit(greedy(backend, "ROMEO:", 0), empty)
    end = empty.wait()
    assert (end.finish_reason, end.completion_tokens, empty.text) == ("length", 0, "")


def test_invalid_settings_are_refused(backend):
    for kwargs in (
        {"parallel": 0},
        {"prefill_chunk": 0},
        {"max_queue": -1},
        {"timeout": 0},
        {"queue_timeout": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            Scheduler(backend, **kwargs)


@pytest.mark.parametrize("model", ["default", "SmolLM2-135M-Instruct.Q4_1.gguf"])
def test_eight_concurrent_requests_equal_their_solo_runs(model, make):
    """Eight requests decoded in one batched forward per step (prompt chunks interleaved with
    decode rows) give, token for token, what each gives alone; sampled ones too."""
    if model == "default":
        back = Backend(Engine.default())
    else:
        from conftest import cached_model
        back = Backend(Engine.load(cached_model(model), n_threads=2))
    prompts = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\nWe are accounted poor citizens", "KING",
               "What, ho!", "To be, or not to be", "Now is the winter of our discontent", "O"]
    params = [{"temperature": 0.0} if i % 2 else {"temperature": 0.8, "top_p": 0.95, "seed": 100 + i}
              for i in range(len(prompts))]
    gate = Gate()
    s = Scheduler(back, parallel=8, prefill_chunk=16, step=gate).start()
    try:
        sinks = [Collector() for _ in prompts]
        gate.open.clear()  # admit all eight before the first step
        for prompt, p, sink in zip(prompts, params, sinks, strict=True):
            s.submit(Request(back.encode(prompt), 24, p), sink)
        gate.open.set()
        for prompt, p, sink in zip(prompts, params, sinks, strict=True):
            assert isinstance(sink.wait(), Finished)
            solo = back.engine.generate(prompt, max_new_tokens=24, **p)
            assert sink.tokens == solo.tokens, prompt
            assert sink.text == solo.text
    finally:
        s.stop()
    assert max(len(b) for b in gate.batches) == 8


def test_a_steps_events_are_flushed_as_the_next_forward_pass_starts(backend, monkeypatch):
    """Buffered events go out through ``flush``: while sequences keep running, from within the
    next step once its forward pass starts (run_step's on_compute), and at once when none
    follows, so every event is delivered."""
    import smallmind.serve.scheduler as scheduler_module

    pending: list = []
    delivered: list = []
    in_step = threading.Event()
    flushes: list[tuple[bool, int]] = []  # (inside a step, events handed over)

    def flush() -> None:
        flushes.append((in_step.is_set(), len(pending)))
        delivered.extend(pending)
        pending.clear()

    def watched_run_step(work, on_compute=None):
        in_step.set()
        try:
            return run_step(work, on_compute)
        finally:
            in_step.clear()

    monkeypatch.setattr(scheduler_module, "run_step", watched_run_step)
    s = Scheduler(backend, parallel=2, flush=flush).start()
    try:
        for prompt in ("ROMEO:", "KING"):
            s.submit(greedy(backend, prompt, 12), pending.append)
        deadline = time.monotonic() + WAIT_S
        while sum(isinstance(e, Finished) for e in delivered) < 2:
            assert time.monotonic() < deadline, "events were left undelivered"
            time.sleep(0.01)
    finally:
        s.stop()
    assert sum(isinstance(e, Emitted) for e in delivered) == 24
    assert any(inside and n > 0 for inside, n in flushes)  # a step's events, sent from the next
    assert not flushes[-1][0] or flushes[-1][1] == 0  # the last events went out after the last step
