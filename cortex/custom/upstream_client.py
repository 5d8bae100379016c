"""A lean HTTP/1.1 client for the app's own server: pooled keep-alive connections, parsed by httptools.

Why not aiohttp (still used for WebSockets, see proxy.py): on a proxied call it spent ~120 µs of
CPU, a third of cortex's cost per call, on what a loopback reverse proxy does not need (URL
objects, header multidicts, text decoding, cookie jars). Here the request head arrives as bytes,
goes out in one write, and the response comes back as (status, raw headers, body chunks); the
same parser uvicorn uses reads it. One connection carries one exchange at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools

Headers = list[tuple[bytes, bytes]]

# Response bytes buffered before we stop reading from the app: a slow client slows the app down
# through TCP instead of growing cortex's memory.
HIGH_WATER_BYTES = 256 * 1024
# Idle connections older than this are closed rather than reused: servers close idle keep-alive
# connections after a few seconds (uvicorn after 5), and a request sent as the server closes is lost.
IDLE_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_IDLE_CONNECTIONS = 256
# Statuses that never have a body (RFC 9112 6.3).
NO_BODY_STATUSES = frozenset({204, 304})


class UpstreamError(Exception):
    """The app's server could not be reached, or broke off the exchange."""


class UpstreamResponse(asyncio.Protocol):
    """One connection to the app's server; between `request` and `release` it is one exchange.

    The response body is read with `read()`: whatever has arrived, at once (an SSE event is not
    held back for a full buffer), b"" at the end.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self._parser_spent = False  # left in the middle of a body (see _take_raw): replaced on reuse
        self.transport: asyncio.Transport | None = None
        self.exchanges = 0  # a reused connection may have been closed by the server meanwhile
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        if self._parser_spent:
            self.parser = httptools.HttpResponseParser(self)
            self._parser_spent = False
        self.status = 0
        self.headers: Headers = []
        self.head_received = False
        self.complete = False  # the whole response body has arrived
        self.keep_alive = False
        self.received_any = False
        self.skip_body = False  # a HEAD: the response ends with its head
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._closed = False
        self._until_eof = False  # neither Content-Length nor chunked: the body ends with the connection
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._reading_paused = False
        self._write_resumed: asyncio.Future[None] | None = None
        self._request_sent = False  # the whole request went out, so the connection can carry another
        self._raw_left = 0  # bytes of a Content-Length body still to come, once its head is parsed
        self._head_keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._last_data = self.loop.time()
        if self._raw_left:
            self._take_raw(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the app's server switched protocols on a plain HTTP request"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the app's server sent an invalid HTTP response ({exc})"))

    def _take_raw(self, data: bytes) -> None:
        """Body bytes of a sized response, taken as they come: parsing them would only copy them
        (httptools hands each body piece over as a new bytes object), which for a large download
        was most of the proxy's work."""
        left = self._raw_left - len(data)
        if left < 0:
            self._fail(UpstreamError("the app's server sent more bytes than its Content-Length"))
            return
        self._raw_left = left
        self._parser_spent = True
        self.on_body(data)
        if not left:
            self.complete = True
            self.keep_alive = self._head_keep_alive
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._until_eof and self.head_received and not self.complete:
            self.complete = True  # the end of the connection was the end of the body
            self._wake()
        elif not self.complete:
            reason = f": {exc}" if exc else ""
            self._fail(UpstreamError(f"the app's server closed the connection{reason}"))
        if self._write_resumed is not None and not self._write_resumed.done():
            self._write_resumed.set_result(None)

    def pause_writing(self) -> None:
        self._write_resumed = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._write_resumed is not None and not self._write_resumed.done():
            self._write_resumed.set_result(None)
        self._write_resumed = None

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: informational, the real head follows (we never send Expect)
            self.headers = []
            return
        self.status = status
        self.head_received = True
        length = chunked = None
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = value
            elif lowered == b"transfer-encoding":
                chunked = value
        no_body = status in NO_BODY_STATUSES or self.skip_body
        self._until_eof = length is None and chunked is None and not no_body
        if length is not None and chunked is None and not no_body and length.isdigit():
            self._raw_left = int(length)  # counted down by on_body, then by _take_raw
            self._head_keep_alive = self.parser.should_keep_alive()
        if self.skip_body:
            # httptools cannot be told that a HEAD's response has no body; the connection, whose
            # parser would now wait for one, is not reused.
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._raw_left and not self._parser_spent:
            self._raw_left -= len(body)
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER_BYTES and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_received:
            return  # the end of a 1xx
        if not self.skip_body:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # The exchange

    async def send(self, head: bytes, body: bytes | AsyncIterator[bytes], chunked: bool) -> None:
        """The request: head and a whole body in one write, or a streamed body after the head."""
        transport = self._transport()
        if isinstance(body, bytes):
            transport.write(head + body if body else head)
            self._request_sent = True
            return
        transport.write(head)
        async for chunk in body:
            if self.head_received or self._closed:
                # The app answered (or gave up) before reading the whole body: stop sending it.
                # The request never ended, so this connection is not reused.
                return
            if chunk:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._write_resumed is not None:
                await self._write_resumed
        if chunked:
            transport.write(b"0\r\n\r\n")
        self._request_sent = True

    async def head(self) -> None:
        """Wait for the response's status and headers."""
        while not self.head_received:
            await self._wait()

    async def read(self) -> bytes:
        """What has arrived of the body; b"" once it has all been read."""
        while not self._chunks:
            if self.complete:
                return b""
            await self._wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._drain())
        self._buffered = 0 if not self._chunks else self._buffered - len(data)
        self._resume_reading()
        return data

    def detach_body(self) -> tuple[list[bytes], int, int] | None:
        """Hand the rest of a sized body to the caller, to move it without reading it (splice):
        (chunks already received, bytes still to come, the socket's descriptor). Reading stops
        until body_moved() or resume_body(). None when the body is not sized or has all come."""
        if not self.head_received or self.complete or not self._raw_left or self.transport is None:
            return None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return None
        self.transport.pause_reading()
        self._reading_paused = True
        self._buffered = 0
        return self._drain(), self._raw_left, sock.fileno()

    def resume_body(self) -> None:
        """Not detached after all: the body goes on arriving through read()."""
        self._resume_reading()

    def body_moved(self) -> None:
        """The caller moved the rest of the body: the response is complete (the parser, left in
        the middle of it, is replaced before the connection carries another exchange)."""
        self._raw_left = 0
        self._parser_spent = True
        self.complete = True
        self.keep_alive = self._head_keep_alive
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _drain(self) -> list[bytes]:
        chunks = list(self._chunks)
        self._chunks.clear()
        return chunks

    def release(self) -> None:
        """Back to the pool when the response was read to its end and may be followed by another."""
        self._cancel_timer()
        if self.complete and self.keep_alive and self._request_sent and not self._closed and not self._chunks:
            self.exchanges += 1
            self._reset()
            self.pool.put_back(self)
        else:
            self.abort()

    @property
    def closed(self) -> bool:
        return self._closed

    def abort(self) -> None:
        self._cancel_timer()
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    # Waiting, with the read timeout: no data from the app for `read_timeout` seconds fails the wait.

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed and not self.complete:
            raise UpstreamError("the app's server closed the connection")
        waiter = self._waiter = self.loop.create_future()
        if self._timer is None:
            self._last_data = self.loop.time()
            self._timer = self.loop.call_at(self._last_data + self.pool.read_timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _on_timer(self) -> None:
        self._timer = None
        due = self._last_data + self.pool.read_timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._on_timer)
        elif self._waiter is not None:
            self._fail(TimeoutError())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self.keep_alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _transport(self) -> asyncio.Transport:
        if self.transport is None or self._closed:
            raise UpstreamError("the connection to the app's server is closed")
        return self.transport


class UpstreamPool:
    """Keep-alive connections to 127.0.0.1:`port`, most recently used first."""

    def __init__(self, host: str, port: int, read_timeout: float) -> None:
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self._idle: list[UpstreamResponse] = []

    async def request(
        self, head: bytes, body: bytes | AsyncIterator[bytes], *, chunked: bool = False, is_head: bool = False
    ) -> UpstreamResponse:
        """Send a request, wait for the response head. A whole (bytes) body is sent again once on a
        fresh connection when a reused one turns out to have been closed by the server before it
        answered a single byte (the keep-alive race); a streamed body cannot be, and is not."""
        connection = await self._connection()
        try:
            return await self._exchange(connection, head, body, chunked, is_head)
        except UpstreamError:
            if not (connection.exchanges and not connection.received_any and isinstance(body, bytes)):
                raise
        connection = await self._connect()
        return await self._exchange(connection, head, body, chunked, is_head)

    async def _exchange(
        self,
        connection: UpstreamResponse,
        head: bytes,
        body: bytes | AsyncIterator[bytes],
        chunked: bool,
        is_head: bool,
    ) -> UpstreamResponse:
        connection.skip_body = is_head
        try:
            await connection.send(head, body, chunked)
            await connection.head()
        except BaseException:
            connection.abort()
            raise
        return connection

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()  # the pool is built before uvicorn's loop runs

    async def _connection(self) -> UpstreamResponse:
        now = self.loop.time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < IDLE_SECONDS and not connection.closed:
                return connection
            connection.abort()
        return await self._connect()

    async def _connect(self) -> UpstreamResponse:
        try:
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamResponse(self), self.host, self.port),
                CONNECT_TIMEOUT_SECONDS,
            )
        except OSError as exc:
            reason = exc.strerror or exc
            raise UpstreamError(f"cannot connect to {self.host}:{self.port} ({reason})") from None
        return protocol

    def put_back(self, connection: UpstreamResponse) -> None:
        connection.idle_since = self.loop.time()
        if len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.abort()

    def close(self) -> None:
        for connection in self._idle:
            connection.abort()
        self._idle.clear()


async def read_all(response: UpstreamResponse, release: bool = True) -> bytes:
    """The whole body; then, by default, the connection goes back to the pool."""
    chunks = []
    try:
        while chunk := await response.read():
            chunks.append(chunk)
    except BaseException:
        response.abort()
        raise
    if release:
        response.release()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
