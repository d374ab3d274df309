"""The streaming fast paths of the server, checked against the plain ones (no model needed): a
text chunk filled into its serialised template is byte for byte the chunk serialised whole,
and events handed from another thread through a relay arrive complete and in order."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from smallmind.serve._backend import Emitted
from smallmind.serve._protocol import ChatCompletionRequest, CompletionRequest
from smallmind.serve._relay import Relays
from smallmind.serve._response import Run, sse_data
from smallmind.serve.scheduler import Finished

TEXTS = ["Hello", " world", "", 'say "hi"\\n', "tab\there\nnew line", "\x00\x1f\x7f", "é café ☕ 😀", "</s>"]


def _bodies() -> list:
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    completion = {"prompt": "hi", "stream": True}
    usage = {"stream_options": {"include_usage": True}}
    return [ChatCompletionRequest(**chat), ChatCompletionRequest(**chat, **usage, n=2),
            CompletionRequest(**completion), CompletionRequest(**completion, **usage, n=3)]


@pytest.mark.parametrize("body", _bodies(), ids=["chat", "chat-usage-n2", "completion", "completion-usage-n3"])
def test_a_templated_text_chunk_is_the_chunk_serialised_whole(body) -> None:
    n = body.n
    fast, plain = Run(body, 'model "x" ☕', n, [3] * n), Run(body, 'model "x" ☕', n, [3] * n)
    plain.id, plain.created = fast.id, fast.created
    assert fast.templates is not None
    for step, text in enumerate(TEXTS * 2):
        index = step % n
        event = Emitted(step, text)
        expected = "".join(sse_data(chunk) for chunk in plain.add(index, event))
        assert fast.sse(index, event) == expected
        if text:
            chunk = json.loads(expected.removeprefix("data: "))
            assert (chunk["choices"][0]["delta"]["content"] if fast.chat else chunk["choices"][0]["text"]) == text
    for index in range(n):
        end = Finished("length", 3, len(TEXTS), 0)
        assert fast.sse(index, end) == "".join(sse_data(chunk) for chunk in plain.add(index, end))
    assert fast.done and fast.response()["choices"] == plain.response()["choices"]


def test_a_relay_delivers_every_event_in_order_once_flushed() -> None:
    relays = Relays()
    received: list = []

    async def main() -> None:
        boxes = [relays.mailbox() for _ in range(3)]
        sinks = [box.sink(i) for i, box in enumerate(boxes)]

        def engine() -> None:  # as the scheduler does: sink calls, then one flush per round
            for step in range(50):
                for sink in sinks:
                    sink(Emitted(step, str(step)))
                relays.flush()

        thread = threading.Thread(target=engine)
        thread.start()
        for i, box in enumerate(boxes):
            got: list = []
            while len(got) < 50:
                events = await box.take(5.0)
                assert events, "nothing arrived within 5 s"
                got += events
            assert got == [(i, Emitted(step, str(step))) for step in range(50)]
            received.append(i)
        thread.join()
        assert await boxes[0].take(0.01) == []  # nothing more: the wait times out empty

    asyncio.run(main())
    assert received == [0, 1, 2]
    relays.flush()  # the loop has closed: nothing is posted to it any more
