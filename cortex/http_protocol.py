"""uvicorn's httptools protocol with the limits it lacks: a request read deadline and a head size cap."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Protocol

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from cortex.config import Settings
from cortex.responses import Headers, encode_error

# Request line + headers. httptools (llhttp) has no limit of its own: uvicorn accepts a 10 MB header,
# and httptools grows each unfinished header value by bytes concatenation while it arrives.
MAX_HEAD_BYTES = 64 * 1024
# After a 408/431 the client may still be sending. Closing a socket with unread input makes the
# kernel answer with a reset, which can destroy our response before the client reads it; so the
# connection is half-closed and what still arrives is dropped for up to this long.
LINGER_SECONDS = 2.0
# A timer may run this early (the loop's clock resolution); waking for less is not worth a new timer.
_TIMER_SLACK = 0.005

logger = logging.getLogger("cortex.http")


def connection_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config / uvicorn.run keyword arguments that put the connection limits in force."""
    # uvicorn only calls `http` (config.http_protocol_class(config=..., server_state=..., ...)), so a
    # partial carries the per-server deadline; unlike a class made in a closure it pickles by
    # reference, which `--reload` needs to hand the config to its child process.
    protocol = functools.partial(HardenedHttpProtocol, request_read_timeout=settings.request_read_timeout)
    # uvicorn annotates timeout_keep_alive as int but only passes it to loop.call_later: floats work.
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_timeout}


# The lifespan state key under which an app offers a DirectLane to the connections.
DIRECT_LANE = "cortex.direct_lane"


class DirectExchange(Protocol):
    """A request a DirectLane took: the connection feeds it the body, then it answers on its own.

    While it answers it stands where uvicorn keeps the request's cycle, so uvicorn's own logic
    (pipelined requests wait, shutdown lets it finish, a lost connection marks it) applies to it:
    hence these four attributes, which are a RequestResponseCycle's names.
    """

    response_complete: bool
    keep_alive: bool
    disconnected: bool

    @property
    def message_event(self) -> Any: ...  # .set() is called when the connection is lost

    def on_body(self, body: bytes) -> None: ...

    def on_request_complete(self) -> None: ...

    def on_client_gone(self) -> None: ...


class DirectLane(Protocol):
    """Answers some requests below ASGI, straight from the parsed head (the custom runtime's
    proxy: an ASGI round trip would cost more than the whole exchange with the app's server)."""

    def take(self, connection: HardenedHttpProtocol) -> DirectExchange | None:
        """The exchange that will answer this request, or None to leave it to the ASGI app."""
        ...


class _HeadTooLargeError(Exception):
    """Raised in a parser callback: the only way to stop httptools in the middle of a chunk."""


class HardenedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes slow and oversized requests.

    - request_read_timeout: seconds from the connection opening, or from the end of the previous
      response, to the last byte of the request body. A silent connection is closed; a partial
      head gets 408; a body still trickling in when the app already reads it is cut off, so the
      app's receive() returns http.disconnect.
    - MAX_HEAD_BYTES: a longer request line + headers gets 431.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        request_read_timeout: float = 30.0,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.request_read_timeout = request_read_timeout
        # One timer per connection, moved lazily: restarting the clock per request is then a store,
        # not a TimerHandle allocation and a cancel on the hot path.
        self._read_deadline: float | None = None  # loop time; None: not waiting for a request
        self._read_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._receiving = False  # a request has begun and its body has not ended
        self._in_head = False  # ... and its headers have not ended either
        self._head_bytes = 0  # bytes of the unfinished head that came in earlier chunks
        self._chunk_bytes = 0  # size of the chunk being parsed
        self._requests_read = 0  # tells whether a chunk held the end of a request
        self._discarding = False  # answered 408/431: the rest of the input is dropped
        self._direct: DirectExchange | None = None  # the request a DirectLane is answering
        self._direct_receiving = False  # ... and its body is still arriving

    # Connection

    # asyncio.Protocol takes any BaseTransport; uvicorn narrows it to Transport, and so do we.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_read_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._direct is not None:
            self._direct.on_client_gone()
        self._read_deadline = None
        for timer in (self._read_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()  # releases this protocol now rather than when the timer is due
        self._read_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, plus the head count and the 431 (its own handler would answer
        # the exception raised from on_headers_complete with a 400).
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        self._chunk_bytes = len(data)
        requests_read = self._requests_read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLargeError):
                self._reject_head_too_large()
            else:
                self._reject_invalid()
        except httptools.HttpParserError:
            self._reject_invalid()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        else:
            if self._in_head:
                self._count_unfinished_head(len(data), self._requests_read != requests_read)

    def handle_websocket_upgrade(self) -> None:
        self._read_deadline = None  # the connection now belongs to the WebSocket protocol
        super().handle_websocket_upgrade()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The head is at most what arrived since it began, so it is only measured when that is
        # more than the limit (a large body in the same chunk, or a large head).
        arrived = self._head_bytes + self._chunk_bytes
        if arrived > MAX_HEAD_BYTES and self._parsed_head_size() > MAX_HEAD_BYTES:
            raise _HeadTooLargeError
        if not self._take_directly():
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._direct_receiving:
            assert self._direct is not None
            self._direct.on_body(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._receiving = False
        self._requests_read += 1
        self._read_deadline = None  # handling it has its own limit: response_grace_period
        if self._direct_receiving:
            assert self._direct is not None
            self._direct_receiving = False
            self._direct.on_request_complete()
            return
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered before its body was read (a 413): the connection now waits for the next one.
            self._start_read_clock()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if self.transport.is_closing():
            return
        # Idle, or a request is arriving; not when a pipelined request that had fully arrived
        # has just been started.
        if self._receiving or not pipelined:
            self._start_read_clock()

    # Requests answered below ASGI

    def _take_directly(self) -> bool:
        lane: DirectLane | None = self.app_state.get(DIRECT_LANE)
        if lane is None or self._is_answering():  # a pipelined request waits in uvicorn's line
            return False
        exchange = lane.take(self)
        if exchange is None:
            return False
        self._direct = exchange
        self._direct_receiving = True
        self.cycle = exchange  # type: ignore[assignment]  # see DirectExchange
        return True

    def direct_exchange_done(self, exchange: DirectExchange) -> None:
        """The exchange has written its whole response: on to the next request, as uvicorn does."""
        if self._direct is exchange:
            self._direct = None
        exchange.response_complete = True
        if not exchange.keep_alive:
            self.transport.close()
        self.on_response_complete()

    # The read deadline

    def _start_read_clock(self) -> None:
        self._read_deadline = self.loop.time() + self.request_read_timeout
        if self._read_timer is None:
            self._read_timer = self.loop.call_at(self._read_deadline, self._on_read_timer)

    def _on_read_timer(self) -> None:
        self._read_timer = None
        deadline = self._read_deadline
        if deadline is None or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # Our own back-pressure (a pipelined request waiting) keeps the rest of the request in
            # the socket: that is not the client's delay, so it gets a whole deadline once we read.
            deadline = self._read_deadline = self.loop.time() + self.request_read_timeout
        if deadline - self.loop.time() > _TIMER_SLACK:  # the clock was restarted since
            self._read_timer = self.loop.call_at(deadline, self._on_read_timer)
            return
        self._read_deadline = None
        self._on_read_timeout()

    def _on_read_timeout(self) -> None:
        if self._in_head and not self._is_answering():
            seconds = f"{self.request_read_timeout:g}"
            message = (
                f"The request was not received within {seconds} s (CORTEX_REQUEST_READ_TIMEOUT); the "
                "connection is closed. Send the whole request at once, or raise the limit."
            )
            self._reject(408, "request_timeout", message)
            return
        # Nothing arrived (a silent or idle connection), or the app is already reading a body that
        # trickles in: closing makes its receive() return http.disconnect, and it ends quietly.
        logger.debug("%s - connection closed: no complete request within the read deadline", self._peer())
        self.transport.close()

    # Head size

    def _count_unfinished_head(self, chunk_bytes: int, ended_a_request: bool) -> None:
        if ended_a_request:
            # The chunk also held the end of an earlier (pipelined) request, so only what was parsed
            # surely belongs to this head; every later chunk counts in full.
            self._head_bytes = self._parsed_head_size()
        else:
            self._head_bytes += chunk_bytes
        if self._head_bytes > MAX_HEAD_BYTES:
            self._reject_head_too_large()

    def _parsed_head_size(self) -> int:
        """A lower bound of the head's size on the wire: URL, headers and their separators."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # Answers that end the connection

    def _reject_head_too_large(self) -> None:
        message = (
            f"The request line and headers are larger than {MAX_HEAD_BYTES} bytes; the connection is "
            "closed. Send fewer or shorter headers, or move the data into the body."
        )
        self._reject(431, "headers_too_large", message)

    def _reject_invalid(self) -> None:
        message = "Invalid HTTP request received."  # uvicorn's own answer
        self.logger.warning(message)
        self.send_400_response(message)

    def _reject(self, status: int, code: str, message: str) -> None:
        logger.info("%s - %d: %s", self._peer(), status, message)
        self._read_deadline = None
        self._discarding = True
        if self._is_answering():
            # The response to an earlier pipelined request is being written; a second one would
            # land in the middle of it.
            self.transport.close()
            return
        self.transport.write(_error_response(status, code, message, self.server_state.default_headers))
        if not self.transport.can_write_eof():  # TLS
            self.transport.close()
            return
        self.transport.write_eof()  # the client reads the answer, then end of stream
        self.flow.resume_reading()  # keep reading (and dropping) so closing does not reset
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _is_answering(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


def _error_response(status: int, code: str, message: str, default_headers: Headers) -> bytes:
    body = encode_error(code, message)
    lines = [STATUS_LINE[status]]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        b"\r\n",
    ]
    return b"".join(lines) + body
