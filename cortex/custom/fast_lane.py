"""The proxy's direct lane: plain calls to a custom runtime answered below ASGI.

A proxied call does little work of its own (forward a head and a body, relay the answer), so the
ASGI round trip around it (a task running the app, message dicts, receive/send futures, header
checks on the way out, a write for the head and another for the body) cost more than the
exchange with the app's server itself. Here the connection hands the parsed head straight to a
ProxiedExchange, which writes the request to a pooled upstream connection in one write and the
answer back to the client in one write when it is whole.

Only the common case takes this lane; everything else is left to the ASGI app (ProxyRoutes),
which does the same with full generality: a request that needs cortex's own handling (runs,
`?async=true`, `webhookEndpoint`, a refusal: 401/403/429/503), a body that streams (chunked,
or larger than DIRECT_BODY_BYTES), HEAD, `Expect: 100-continue`, HTTP/1.0, upgrades.
"""

from __future__ import annotations

import asyncio
import uuid
from time import perf_counter
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from cortex.auth import Denial
from cortex.custom import splice
from cortex.custom.proxy import FRAMING, Upstream, request_head, request_headers, response_headers
from cortex.custom.routes import PROXIED_LABEL, gateway_error
from cortex.custom.upstream_client import NO_BODY_STATUSES, UpstreamError, UpstreamResponse, read_all
from cortex.errors import RequestError
from cortex.logs import current_run_id, log_call
from cortex.metrics import NO_RESPONSE
from cortex.responses import encode_error
from cortex.state import ServingState

if TYPE_CHECKING:
    from cortex.http_protocol import HardenedHttpProtocol

# Larger bodies stream through the ASGI path, which forwards them chunk by chunk under flow control.
DIRECT_BODY_BYTES = 1024 * 1024
# A body of known, small size: worth holding the head back until it has arrived (apps often write
# head and body separately; one write to the client instead of two saves a system call).
SMALL_BODY_BYTES = 64 * 1024
# From this size a sized body is spliced (splice.py): setting that up costs a few system calls.
SPLICE_BYTES = 1024 * 1024
# Query parameters that make a call cortex's business (a run); found anywhere, ASGI decides.
_CORTEX_QUERY = (b"async", b"webhookEndpoint")


class _NoEvent:
    """uvicorn sets a cycle's message_event when the connection is lost; we hear of it directly."""

    def set(self) -> None:
        pass


class ProxyLane:
    """Decides which requests take the direct lane (a DirectLane for HardenedHttpProtocol)."""

    def __init__(self, state: ServingState, upstream: Upstream) -> None:
        self.state = state
        self.upstream = upstream
        self.prefix = f"/v4/{state.project_id}/{state.app_name}/".encode()

    def take(self, connection: HardenedHttpProtocol) -> ProxiedExchange | None:
        state = self.state
        parser = connection.parser
        url: bytes = connection.url
        if (
            not url.startswith(self.prefix)
            or not state.is_ready
            or connection.expect_100_continue
            or parser.should_upgrade()
            or parser.get_http_version() != "1.1"
        ):
            return None
        method = parser.get_method()
        target = url[len(self.prefix) - 1 :]  # "/rest?query"
        if method == b"HEAD" or _is_cortex_route(target):
            return None
        length = 0
        authorization = None
        for name, value in connection.headers:
            if name == b"content-length":
                if not value.isdigit() or int(value) > min(DIRECT_BODY_BYTES, state.settings.max_body_bytes):
                    return None
                length = int(value)
            elif name == b"transfer-encoding":
                return None  # a streamed body
            elif name == b"authorization":
                authorization = value
        authenticator = state.authenticator
        if authenticator is not None and isinstance(authenticator.check(authorization), Denial):
            return None
        gate = state.gate
        entered = gate.try_enter()
        if not entered and gate.waiting >= gate.max_waiting:
            return None  # the line is full too: the ASGI path answers 429
        return ProxiedExchange(self, connection, method.decode("ascii"), target, length, entered)


def _is_cortex_route(target: bytes) -> bool:
    path, _, query = target.partition(b"?")
    if path == b"/runs" or path.startswith(b"/runs/"):
        return True
    return bool(query) and any(name in query for name in _CORTEX_QUERY)


class ProxiedExchange:
    """One request on the direct lane, from its parsed head to the last byte of the answer."""

    message_event = _NoEvent()

    def __init__(
        self,
        lane: ProxyLane,
        connection: HardenedHttpProtocol,
        method: str,
        target: bytes,
        length: int,
        entered: bool,
    ) -> None:
        self.lane = lane
        self.entered = entered  # holds a replica_concurrency slot (else it waits in line for one)
        self.connection = connection
        self.response_complete = False
        self.keep_alive = connection.parser.should_keep_alive()
        self.disconnected = False
        self.method = method
        self.url = connection.url  # for the access log: by the end, a pipelined request may have begun
        self.run_id = str(uuid.uuid4())
        self.started = perf_counter()
        self.status = 0
        self.head_written = False
        self._body: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        headers = request_headers(
            connection.headers,
            connection.client[0] if connection.client else None,
            connection.scheme or "http",
            self.run_id,
            drop=FRAMING,
        )
        if length or method in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", b"%d" % length))
        self._head = request_head(method, target.decode("latin-1"), lane.upstream.host_header, headers)

    # From the connection

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_request_complete(self) -> None:
        task = self._task = self.connection.loop.create_task(self._run())
        tasks = self.connection.tasks  # uvicorn's graceful shutdown waits for these
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_client_gone(self) -> None:
        self.disconnected = True
        if self._task is None:  # gone while its request was arriving
            self._finish()
        elif not self._task.done():
            self._task.cancel()  # also closes the upstream connection: the app sees the client leave

    # The exchange

    async def _run(self) -> None:
        current_run_id.set(self.run_id)
        upstream = self.lane.upstream
        body = b"".join(self._body)
        try:
            if not self.entered:
                await self.lane.state.gate.enter()
                self.entered = True
            response = await upstream.pool.request(self._head, body)
            await self._relay(response)
        except (UpstreamError, TimeoutError, splice.SpliceError) as exc:
            if self.head_written:  # mid-response: all we can do is end the connection
                self.keep_alive = False
            else:
                self._write_error(gateway_error(exc, upstream.port, self.lane.state.grace_seconds))
        except RequestError as exc:  # 429: the line filled up since the head arrived
            self._write_error(exc)
        except asyncio.CancelledError:
            pass  # the client left
        finally:
            self._finish()

    async def _relay(self, response: UpstreamResponse) -> None:
        try:
            self.status = response.status
            headers = response_headers(response.headers, self.run_id)
            length = _content_length(headers)  # httptools has checked it is a number
            chunked = length is None and self.status not in NO_BODY_STATUSES
            head = self._response_head(headers, chunked)
            transport = self.connection.transport
            if response.complete or (length is not None and length <= SMALL_BODY_BYTES):
                # the usual answer: all of it in one write
                body = await read_all(response, release=False)
                transport.write(head + _whole_body(body, chunked))
                self.head_written = True
            elif length is not None and length >= SPLICE_BYTES and splice.AVAILABLE:
                await self._splice(response, head)
            else:
                transport.write(head)
                self.head_written = True
                await self._stream(response, chunked)
        except BaseException:
            response.abort()  # the exchange did not end cleanly: this connection is not reused
            raise
        response.release()

    async def _splice(self, response: UpstreamResponse, head: bytes) -> None:
        """A large sized body: the kernel moves it from the app's socket to the client's."""
        transport = self.connection.transport
        detached = response.detach_body()
        if detached is None:
            transport.write(head)
            self.head_written = True
            await self._stream(response, chunked=False)
            return
        received, remaining, source = detached
        transport.write(b"".join([head, *received]))
        self.head_written = True
        client = transport.get_extra_info("socket")
        if client is None:
            response.resume_body()
            await self._stream(response, chunked=False)
            return
        if transport.get_write_buffer_size():
            await self._written_out()  # bytes spliced now would overtake what is still queued
        await splice.splice_body(source, client.fileno(), remaining, self.lane.upstream.read_timeout)
        response.body_moved()

    async def _written_out(self) -> None:
        """Wait until the transport has handed everything it holds to the socket: with both
        limits at 0 it pauses us while it holds anything and resumes us once it holds nothing."""
        transport = self.connection.transport
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            await self.connection.flow.drain()
        finally:
            transport.set_write_buffer_limits()  # uvloop's defaults, as uvicorn leaves them

    async def _stream(self, response: UpstreamResponse, chunked: bool) -> None:
        connection = self.connection
        transport = connection.transport
        while chunk := await response.read():
            if chunked:  # the chunk's own bytes are not copied: uvloop sends the three with writev
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if connection.flow.write_paused:  # a slow client slows the app down, not our memory
                await connection.flow.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")

    def _response_head(self, headers: list[tuple[bytes, bytes]], chunked: bool) -> bytes:
        lines = [STATUS_LINE[self.status]]
        for name, value in (*self.connection.server_state.default_headers, *headers):
            lines += (name, b": ", value, b"\r\n")
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _write_error(self, error: RequestError) -> None:
        self.status = error.status
        body = encode_error(error.code, error.message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", self.run_id.encode()),
        ]
        if error.retry_after is not None:
            headers.append((b"retry-after", b"%d" % error.retry_after))
        self.connection.transport.write(self._response_head(headers, chunked=False) + body)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        state = self.lane.state
        if self.entered:
            state.gate.leave()
        status = self.status or NO_RESPONSE
        state.metrics.observe(PROXIED_LABEL, "proxy", status, self.started)
        log_call(PROXIED_LABEL, status, (perf_counter() - self.started) * 1000, self.run_id)
        connection = self.connection
        if connection.access_log:
            connection.access_logger.info(
                '%s - "%s %s HTTP/1.1" %d',
                "{}:{}".format(*connection.client) if connection.client else "-",
                self.method,
                self.url.decode("latin-1"),
                status,
            )
        if self.disconnected:
            self.response_complete = True
            return
        connection.direct_exchange_done(self)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _whole_body(data: bytes, chunked: bool) -> bytes:
    if not chunked:
        return data
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
