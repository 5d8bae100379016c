"""SSE framing of chunks and errors, and pumping sync and async generators to a writer."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from cortex import streaming
from cortex.concurrency import ThreadRunner
from cortex.streaming import (
    encode_error_event,
    encode_event,
    stream_async_generator,
    stream_sync_generator,
)


class Point(BaseModel):
    x: int
    label: str


@dataclasses.dataclass
class Pair:
    left: int
    right: list[str]


def frames(data: bytes) -> list[bytes]:
    """The events in a byte stream, each with its terminating blank line."""
    return [event + b"\n\n" for event in data.split(b"\n\n")[:-1]]


class Collector:
    """A client: every write is kept, optionally after a pause per write."""

    def __init__(self, pause: float = 0.0) -> None:
        self.writes: list[bytes] = []
        self.pause = pause

    async def write(self, data: bytes) -> None:
        if self.pause:
            await asyncio.sleep(self.pause)
        self.writes.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


async def wait_until(event: threading.Event, timeout: float = 5.0) -> None:
    """Await a flag set by a worker thread without blocking the loop."""
    async with asyncio.timeout(timeout):
        while not event.is_set():
            await asyncio.sleep(0.001)


def run_sync_stream(gen: Iterator[Any], client: Collector, max_threads: int = 2) -> None:
    async def main() -> None:
        threads = ThreadRunner(max_threads)
        try:
            await stream_sync_generator(gen, client.write, "run-1", threads)
        finally:
            threads.shutdown()

    asyncio.run(main())


# encode_event


def test_bytes_are_sent_verbatim() -> None:
    assert encode_event(b"event: ping\ndata: 1\n\n") == b"event: ping\ndata: 1\n\n"
    assert encode_event(b"no framing at all") == b"no framing at all"


@pytest.mark.parametrize(
    "chunk",
    [
        "data: already framed\n\n",
        "event: done\ndata: {}\n\n",
        "id: 7\n",
        "retry: 1000\n\n",
        ": keep-alive\n\n",
    ],
)
def test_pre_framed_strings_are_sent_verbatim(chunk: str) -> None:
    assert encode_event(chunk) == chunk.encode()


def test_plain_string_becomes_one_data_event() -> None:
    assert encode_event("hello world") == b"data: hello world\n\n"


def test_string_that_only_mentions_a_field_name_is_still_framed() -> None:
    assert encode_event("data") == b"data: data\n\n"
    assert encode_event(" data: indented") == b"data:  data: indented\n\n"


def test_empty_string_is_an_empty_data_event() -> None:
    assert encode_event("") == b"data: \n\n"


def test_each_line_of_a_multiline_string_gets_its_own_data_field() -> None:
    assert encode_event("one\ntwo\nthree") == b"data: one\ndata: two\ndata: three\n\n"


def test_crlf_line_breaks_are_framed_like_lf() -> None:
    assert encode_event("one\r\ntwo") == b"data: one\ndata: two\n\n"


def test_lone_carriage_return_is_framed_as_a_line_break() -> None:
    assert encode_event("one\rtwo") == b"data: one\ndata: two\n\n"


def test_non_ascii_text_is_utf8_encoded() -> None:
    assert encode_event("héllo ✓") == "data: héllo ✓\n\n".encode()


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ({"token": "hi", "index": 0}, b'data: {"token":"hi","index":0}\n\n'),
        ([1, "two", None], b'data: [1,"two",null]\n\n'),
        (42, b"data: 42\n\n"),
        (1.5, b"data: 1.5\n\n"),
        (True, b"data: true\n\n"),
        (None, b"data: null\n\n"),
        (Point(x=1, label="a"), b'data: {"x":1,"label":"a"}\n\n'),
        (Pair(left=2, right=["r"]), b'data: {"left":2,"right":["r"]}\n\n'),
        ({"text": "line\nbreak"}, b'data: {"text":"line\\nbreak"}\n\n'),
    ],
)
def test_other_chunks_are_sent_as_compact_json(chunk: Any, expected: bytes) -> None:
    assert encode_event(chunk) == expected


def test_error_event_names_the_exception_and_the_run() -> None:
    event = encode_error_event(ValueError("bad token"), "run-9")
    assert event == b'event: error\ndata: {"type":"ValueError","message":"bad token","run_id":"run-9"}\n\n'


def test_error_event_with_multiline_message_stays_one_event() -> None:
    event = encode_error_event(RuntimeError("first\nsecond"), "r")
    assert frames(event) == [event]
    assert b'"message":"first\\nsecond"' in event


# stream_sync_generator


def test_sync_stream_sends_every_chunk_in_order() -> None:
    client = Collector()
    run_sync_stream(iter(range(1000)), client)
    assert frames(client.data) == [f"data: {i}\n\n".encode() for i in range(1000)]


def test_sync_stream_sends_error_event_after_the_chunks() -> None:
    def numbers() -> Iterator[int]:
        yield from range(100)
        raise ValueError("model crashed")

    client = Collector()
    run_sync_stream(numbers(), client)
    events = frames(client.data)
    assert events[:100] == [f"data: {i}\n\n".encode() for i in range(100)]
    assert events[100:] == [
        b'event: error\ndata: {"type":"ValueError","message":"model crashed","run_id":"run-1"}\n\n'
    ]


def test_sync_stream_of_an_empty_generator_writes_nothing() -> None:
    client = Collector()
    run_sync_stream(iter([]), client)
    assert client.writes == []


def test_sync_stream_runs_the_generator_outside_the_event_loop_thread() -> None:
    seen: list[int] = []

    def numbers() -> Iterator[int]:
        seen.append(threading.get_ident())
        yield 1

    client = Collector()
    run_sync_stream(numbers(), client)
    assert client.data == b"data: 1\n\n"
    assert seen and seen[0] != threading.get_ident()


def test_cancelled_sync_stream_closes_the_generator_in_its_worker_thread() -> None:
    body_threads: list[int] = []
    finally_threads: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        body_threads.append(threading.get_ident())
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            finally_threads.append(threading.get_ident())
            closed.set()

    async def main() -> None:
        first_write = asyncio.Event()

        async def stuck_client(data: bytes) -> None:
            first_write.set()
            await asyncio.Event().wait()  # never reads again

        threads = ThreadRunner(2)
        task = asyncio.create_task(stream_sync_generator(endless(), stuck_client, "r", threads))
        await first_write.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(closed)
        threads.shutdown()

    asyncio.run(main())
    assert finally_threads == body_threads
    assert finally_threads[0] != threading.get_ident()


def test_slow_client_keeps_sync_generator_at_most_a_window_ahead() -> None:
    produced = 0
    written = 0
    leads: list[int] = []

    def numbers() -> Iterator[int]:
        nonlocal produced
        for i in range(1000):
            produced += 1
            yield i

    async def slow_client(data: bytes) -> None:
        nonlocal written
        await asyncio.sleep(0.002)
        leads.append(produced - written)  # chunks the generator made that the client has not taken
        written += len(frames(data))

    async def main() -> None:
        threads = ThreadRunner(2)
        await stream_sync_generator(numbers(), slow_client, "r", threads)
        threads.shutdown()

    asyncio.run(main())
    assert written == 1000
    assert max(leads) <= streaming.WINDOW + 2
    assert max(leads) >= streaming.WINDOW // 2  # it does run ahead while the client is busy


# stream_async_generator


def run_async_stream(agen: AsyncIterator[Any], client: Collector) -> None:
    asyncio.run(stream_async_generator(agen, client.write, "run-1"))


def test_async_stream_sends_every_chunk_in_order() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(1000):
            yield i

    client = Collector()
    run_async_stream(numbers(), client)
    assert client.writes == [f"data: {i}\n\n".encode() for i in range(1000)]


def test_async_stream_sends_error_event_after_the_chunks() -> None:
    async def words() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise KeyError("vocab")

    client = Collector()
    run_async_stream(words(), client)
    assert client.writes == [
        b"data: a\n\n",
        b"data: b\n\n",
        b'event: error\ndata: {"type":"KeyError","message":"\'vocab\'","run_id":"run-1"}\n\n',
    ]


def test_async_stream_closes_the_generator_when_it_ends() -> None:
    closed: list[bool] = []

    async def words() -> AsyncIterator[str]:
        try:
            yield "a"
        finally:
            closed.append(True)

    client = Collector()
    run_async_stream(words(), client)
    assert client.writes == [b"data: a\n\n"]
    assert closed == [True]


def test_cancelled_async_stream_runs_generator_finally_while_client_is_stuck() -> None:
    closed: list[str] = []

    async def words() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            await asyncio.sleep(0)  # cleanup may itself await
            closed.append("finally")

    async def main() -> None:
        first_write = asyncio.Event()

        async def stuck_client(data: bytes) -> None:
            first_write.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(stream_async_generator(words(), stuck_client, "r"))
        await first_write.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert closed == ["finally"]


def test_cancelled_async_stream_runs_generator_finally_while_generator_awaits() -> None:
    closed: list[str] = []

    async def slow_words() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.sleep(60)
            yield "b"
        finally:
            closed.append("finally")

    async def main() -> None:
        client = Collector()
        task = asyncio.create_task(stream_async_generator(slow_words(), client.write, "r"))
        while not client.writes:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.writes == [b"data: a\n\n"]

    asyncio.run(main())
    assert closed == ["finally"]


def test_async_generator_that_never_awaits_lets_other_tasks_run() -> None:
    other_ran = False
    limit = 2_000_000

    async def busy() -> AsyncIterator[int]:
        i = 0
        while not other_ran and i < limit:
            yield i
            i += 1

    async def other() -> None:
        nonlocal other_ran
        other_ran = True

    sent: list[bytes] = []

    async def instant_client(data: bytes) -> None:
        sent.append(data)

    async def main() -> None:
        stream = asyncio.create_task(stream_async_generator(busy(), instant_client, "r"))
        await asyncio.sleep(0)  # the stream task starts first
        await asyncio.gather(stream, other())

    asyncio.run(main())
    assert other_ran
    assert len(sent) < limit
