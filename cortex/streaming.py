"""Server-Sent Events: framing chunks (pure) and pumping a user generator to the client."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from cortex.concurrency import ThreadRunner, call_soon_if_open
from cortex.serialization import encode_json

logger = logging.getLogger("cortex.stream")

SSE_FIELD_PREFIXES = ("data:", "event:", "id:", "retry:")
WINDOW = 64  # chunks a sync generator may run ahead of a slow client
FAIRNESS_SECONDS = 0.005  # an async generator that never awaits still lets other requests run

Write = Callable[[bytes], Awaitable[None]]
Encode = Callable[[Any], bytes]  # a chunk -> its frame
EncodeError = Callable[[BaseException, str], bytes]  # (exception, run_id) -> the frame that ends a stream


def encode_event(chunk: Any) -> bytes:
    """One chunk as SSE bytes: pre-framed events and bytes verbatim, everything else as `data:`."""
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        if is_pre_framed(chunk):
            return chunk.encode() if chunk.endswith("\n") else (chunk + "\n\n").encode()
        # Every line of the text needs its own `data:` field; SSE ends a line at CR, LF or CRLF.
        lines = chunk.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return ("data: " + "\ndata: ".join(lines) + "\n\n").encode()
    return b"data: " + encode_json(chunk) + b"\n\n"


def is_pre_framed(text: str) -> bool:
    """`data: …\n\n` as Cerebrium apps yield it: passed through as the app framed it.

    A text that merely starts with `:` (a common LLM token) is a pre-framed comment only when
    it ends a line; otherwise it is data, so a `:` token is never swallowed as a comment.
    """
    if text.startswith(SSE_FIELD_PREFIXES):
        return True
    return text.startswith(":") and text.endswith("\n")


def encode_error_event(exc: BaseException, run_id: str, error_type: str | None = None) -> bytes:
    payload = {"type": error_type or type(exc).__name__, "message": str(exc), "run_id": run_id}
    return b"event: error\ndata: " + encode_json(payload) + b"\n\n"


async def stream_async_generator(
    agen: AsyncIterator[Any],
    write: Write,
    run_id: str,
    encode: Encode = encode_event,
    encode_error: EncodeError = encode_error_event,
) -> None:
    """Send each chunk as it comes; an exception becomes an `event: error`, never a cut-off.

    `encode` and `encode_error` frame chunks and the error for another protocol (OpenAI's).
    """
    loop = asyncio.get_running_loop()
    last_yield = loop.time()
    try:
        while True:
            try:
                frame = encode(await agen.__anext__())
            except StopAsyncIteration:
                return
            except Exception as exc:  # the user's generator (or its chunk) failed, not the client
                logger.exception("Stream %s failed", run_id)
                await write(encode_error(exc, run_id))
                return
            await write(frame)
            if loop.time() - last_yield > FAIRNESS_SECONDS:
                await asyncio.sleep(0)
                last_yield = loop.time()
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()


async def stream_sync_generator(
    gen: Iterator[Any],
    write: Write,
    run_id: str,
    threads: ThreadRunner,
    encode: Encode = encode_event,
    encode_error: EncodeError = encode_error_event,
) -> None:
    """Run the generator in a worker thread that encodes chunks ahead of the client.

    A thread hop per chunk (Starlette's `iterate_in_threadpool`) caps a stream at a few
    thousand events a second. Here one thread drives the generator and the loop sends
    whatever has piled up in one write; at most WINDOW chunks wait, so a slow client slows the
    generator down instead of filling memory.
    """
    pump = _ThreadedPump(gen, run_id, asyncio.get_running_loop(), encode, encode_error)
    producer = threads.run(pump.produce)
    try:
        while True:
            frames, finished = await pump.take()
            if frames:
                await write(b"".join(frames))
                pump.release(len(frames))
            if finished:
                break
        await producer
    finally:
        pump.close()  # the client is gone or we are done: the thread closes the generator


class _ThreadedPump:
    def __init__(
        self,
        gen: Iterator[Any],
        run_id: str,
        loop: asyncio.AbstractEventLoop,
        encode: Encode,
        encode_error: EncodeError,
    ) -> None:
        self._gen = gen
        self._encode = encode
        self._encode_error = encode_error
        self._run_id = run_id
        self._loop = loop
        self._lock = threading.Lock()
        self._frames: deque[bytes] = deque()
        self._space = threading.Semaphore(WINDOW)
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        self._closed = False

    def produce(self) -> None:
        """Worker thread: next(), encode, hand over; stops at the end, an error, or close()."""
        try:
            while True:
                self._space.acquire()
                if self._closed:
                    return
                try:
                    chunk = next(self._gen)
                except StopIteration:
                    return
                self._put(self._encode(chunk))
        except Exception as exc:
            logger.exception("Stream %s failed", self._run_id)
            self._put(self._encode_error(exc, self._run_id))
        finally:
            close = getattr(self._gen, "close", None)
            if close is not None:
                close()  # runs the generator's `finally` blocks in the thread that ran it
            self._finish()

    async def take(self) -> tuple[list[bytes], bool]:
        """Loop: everything produced so far, and whether the generator is done."""
        while True:
            with self._lock:
                if self._frames or self._finished:
                    frames = list(self._frames)
                    self._frames.clear()
                    return frames, self._finished and not frames
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def release(self, count: int) -> None:
        for _ in range(count):
            self._space.release()

    def close(self) -> None:
        self._closed = True
        self._space.release()  # wake a producer blocked on a full window so it can stop

    def _put(self, frame: bytes) -> None:
        with self._lock:
            self._frames.append(frame)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            call_soon_if_open(self._loop, _wake, waiter)

    def _finish(self) -> None:
        with self._lock:
            self._finished = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            call_soon_if_open(self._loop, _wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
