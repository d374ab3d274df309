"""Events from the engine thread to the event loop, handed over once per step.

The scheduler calls a request's sink on the engine thread for every event, then its ``flush``
once per round of events (a step's tokens for every running request). A :class:`Relays`
sink only buffers the event; ``flush`` hands each event loop's buffer over with one
``call_soon_threadsafe``, so a step of 8 streams costs the loop one wake-up instead of 8, and
each request finds every event that arrived since it last looked in its :class:`Mailbox`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .scheduler import Event

__all__ = ["Mailbox", "Relays"]


class Mailbox:
    """One API request's events (``(choice index, event)``), read on its event loop."""

    def __init__(self, relay: _Relay):
        self._relay = relay
        self._events: list[tuple[int, Event]] = []
        self._waiter: asyncio.Future[None] | None = None

    def sink(self, index: int) -> Callable[[Event], None]:
        """The scheduler's sink for choice ``index`` (called on the engine thread)."""
        post = self._relay.post

        def sink(event: Event) -> None:
            post(self, index, event)

        return sink

    async def take(self, timeout: float) -> list[tuple[int, Event]]:
        """Every event delivered since the last call, waiting up to ``timeout`` seconds for one
        (an empty list when none came)."""
        if not self._events:
            loop = self._relay.loop
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        events, self._events = self._events, []
        return events

    def _deliver(self, index: int, event: Event) -> None:  # on the loop
        self._events.append((index, event))
        _wake(self._waiter)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _Relay:
    """The events bound for one event loop's mailboxes."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._posted: deque[tuple[Mailbox, int, Event]] = deque()
        self._scheduled = False

    def post(self, mailbox: Mailbox, index: int, event: Event) -> None:  # any thread
        self._posted.append((mailbox, index, event))

    def flush(self) -> bool:
        """Wake the loop for the posted events (unless a wake-up is already on its way); False
        once the loop has closed."""
        if self.loop.is_closed():
            self._posted.clear()
            return False
        if self._posted and not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                self._posted.clear()
                return False
        return True

    def _deliver(self) -> None:  # on the loop
        # Cleared before draining: an event posted after this line finds no wake-up on its
        # way and gets one from the next flush; one posted before it is drained below.
        self._scheduled = False
        posted = self._posted
        while posted:
            mailbox, index, event = posted.popleft()
            mailbox._deliver(index, event)


class Relays:
    """Every event loop's relay; :meth:`flush` is the scheduler's ``flush`` callback."""

    def __init__(self) -> None:
        self._relays: dict[asyncio.AbstractEventLoop, _Relay] = {}
        self._lock = threading.Lock()

    def mailbox(self) -> Mailbox:
        """A mailbox for a request handled on the running event loop."""
        loop = asyncio.get_running_loop()
        relay = self._relays.get(loop)
        if relay is None:
            with self._lock:
                relay = self._relays.setdefault(loop, _Relay(loop))
        return Mailbox(relay)

    def flush(self) -> None:  # on the engine thread
        closed: list[Any] = [loop for loop, relay in list(self._relays.items()) if not relay.flush()]
        if closed:
            with self._lock:
                for loop in closed:
                    self._relays.pop(loop, None)
