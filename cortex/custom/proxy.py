"""Forward one HTTP request or WebSocket session to the app's own server, streaming both ways.

HTTP goes through cortex's own lean client (upstream_client.py), WebSockets through aiohttp. The
header rules (what is hop-by-hop, what X-Forwarded-* says) are pure
functions; the rest moves bytes between the ASGI connection and the upstream one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from cortex.custom.upstream_client import UpstreamPool, UpstreamResponse, read_all
from cortex.errors import ClientDisconnectedError
from cortex.responses import encode_error, payload_too_large, wait_for_disconnect

logger = logging.getLogger("cortex.proxy")

Headers = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. `host` is the upstream's.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REPLACED = frozenset(
    {b"host", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
# Headers a WebSocket handshake sets itself; forwarding the client's would clash.
_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)
# The body is framed anew for the app (Content-Length, or chunked when the client streamed it); an
# Expect: 100-continue was already answered to the client by uvicorn.
FRAMING = frozenset({b"content-length", b"expect"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# aiohttp adds these unless told not to; the app should see what the client sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def upstream_path(scope: Scope, prefix_segments: int = 4) -> str:
    """`/v4/{project}/{app}/rest?query` -> `/rest?query`, kept percent-encoded as received."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    parts = raw.split(b"/", prefix_segments)  # [b'', b'v4', project, app, rest]
    rest = parts[prefix_segments] if len(parts) > prefix_segments else b""
    query: bytes = scope.get("query_string", b"")
    path = "/" + rest.decode("latin-1")
    return f"{path}?{query.decode('latin-1')}" if query else path


def forwarded_headers(scope: Scope, request_id: str, drop: frozenset[bytes] = frozenset()) -> Headers:
    """The client's headers minus hop-by-hop ones, plus X-Request-Id and X-Forwarded-*."""
    client = scope.get("client")
    scheme = scope.get("scheme", "http").replace("ws", "http")  # ws -> http, wss -> https
    return request_headers(scope["headers"], client[0] if client else None, scheme, request_id, drop)


def request_headers(
    received: Iterable[tuple[bytes, bytes]],
    client_host: str | None,
    scheme: str,
    request_id: str,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """`received` (names lowercased) minus hop-by-hop ones and `drop`, plus X-Request-Id and
    X-Forwarded-For/-Proto/-Host for a client at `client_host` over `scheme` (http or https)."""
    headers: Headers = []
    forwarded_for: list[bytes] = []
    host = b""
    connection_tokens = _connection_tokens(received)
    for name, value in received:
        if name == b"x-forwarded-for":
            forwarded_for.append(value)
        if name == b"host":
            host = value
        if name in HOP_BY_HOP or name in _REPLACED or name in drop or name in connection_tokens:
            continue
        headers.append((name, value))
    if client_host:
        forwarded_for.append(client_host.encode())
    headers.append((b"x-request-id", request_id.encode()))
    headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    headers.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        headers.append((b"x-forwarded-host", host))
    return headers


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Headers the client named in `Connection:` are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return frozenset(tokens)


# The front door's own: uvicorn adds Date and Server to every response it sends, so the app's
# would be a second copy (two Date headers are invalid).
_SERVER_SET = frozenset({b"x-request-id", b"date", b"server"})


def response_headers(raw: Iterable[tuple[bytes, bytes]], request_id: str) -> Headers:
    headers = [(name.lower(), value) for name, value in raw]
    tokens = _connection_tokens(headers)
    kept = [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in tokens and n not in _SERVER_SET]
    kept.append((b"x-request-id", request_id.encode()))
    return kept


def request_head(method: str, target: str, host: bytes, headers: Headers) -> bytes:
    """The request line and headers, ready for the wire (names and values as the client sent them)."""
    lines = [f"{method} {target} HTTP/1.1\r\nhost: ".encode("latin-1"), host, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope["headers"], b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes, lower: bool = False) -> bytes | None:
    for key, value in headers:
        if (key.lower() if lower else key) == name:
            return value
    return None


async def _stream_down(response: UpstreamResponse, send: Send) -> None:
    while chunk := await response.read():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _text_headers(headers: Headers) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class Upstream:
    """The app's server on 127.0.0.1:`port`: HTTP through a pool of lean keep-alive connections,
    WebSockets through aiohttp."""

    def __init__(self, port: int, read_timeout: float, max_body_bytes: int) -> None:
        self.port = port
        self.host_header = f"127.0.0.1:{port}".encode()
        self.base = URL(f"http://127.0.0.1:{port}")
        self.read_timeout = read_timeout
        self.max_body_bytes = max_body_bytes
        self.pool = UpstreamPool("127.0.0.1", port, read_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # bytes pass through as the app encoded them
                skip_auto_headers=_NO_AUTO_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar(),  # cookies are the client's business
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.read_timeout),
            )
        return self._session

    async def aclose(self) -> None:
        self.pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_and_query: str) -> URL:
        return URL(f"{self.base}{path_and_query}", encoded=True)

    async def forward(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """One HTTP exchange: the request body streams up, the response streams down."""
        first = await receive()
        if first["type"] == "http.disconnect":
            raise ClientDisconnectedError
        first_chunk: bytes = first.get("body", b"")
        headers = forwarded_headers(scope, request_id, drop=FRAMING)
        body: bytes | AsyncIterator[bytes] = first_chunk
        chunked = False
        if first.get("more_body", False):
            declared = _declared_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                raise payload_too_large(self.max_body_bytes)
            body = self._rest_of_body(first_chunk, receive)
            if declared is None:  # the client sent it chunked: so do we
                chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                headers.append((b"content-length", b"%d" % declared))
        elif len(first_chunk) > self.max_body_bytes:
            raise payload_too_large(self.max_body_bytes)
        elif first_chunk or scope["method"] in BODY_METHODS:
            headers.append((b"content-length", b"%d" % len(first_chunk)))
        head = request_head(scope["method"], upstream_path(scope), self.host_header, headers)
        response = await self.pool.request(head, body, chunked=chunked, is_head=scope["method"] == "HEAD")
        try:
            down = response_headers(response.headers, request_id)
            await send({"type": "http.response.start", "status": response.status, "headers": down})
            if response.complete:  # the usual small answer: all of it has already arrived
                await send({"type": "http.response.body", "body": await response.read(), "more_body": False})
            elif _header(down, b"content-length") is None and isinstance(body, bytes):
                # An open-ended stream (SSE): stop reading the app when the client leaves.
                await _until_done_or_gone(_stream_down(response, send), receive)
            else:
                await _stream_down(response, send)
        except BaseException:
            response.abort()  # the exchange did not end cleanly: this connection is not reused
            raise
        response.release()

    async def _rest_of_body(self, first: bytes, receive: Receive) -> AsyncIterator[bytes]:
        size = len(first)
        if first:
            yield first
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnectedError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise payload_too_large(self.max_body_bytes)
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def call_json(self, path: str, body: bytes, request_id: str) -> tuple[int, str, bytes]:
        """POST a JSON body (async runs): (status, content type, body), read whole."""
        headers = [
            (b"content-type", b"application/json"),
            (b"x-request-id", request_id.encode()),
            (b"content-length", b"%d" % len(body)),
        ]
        response = await self.pool.request(request_head("POST", path, self.host_header, headers), body)
        status, content_type = response.status, _header(response.headers, b"content-type", lower=True)
        data = await read_all(response)
        return status, (content_type or b"").decode("latin-1"), data

    async def websocket(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """Handshake upstream first, so a refusal there is a refusal here; then relay both ways."""
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        headers = forwarded_headers(scope, request_id, drop=_HANDSHAKE)
        try:
            upstream = await self.session.ws_connect(
                self.url(upstream_path(scope)),
                headers=_text_headers(headers),
                protocols=tuple(scope.get("subprotocols") or ()),
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            await refuse_websocket(scope, send, exc.status, f"The app refused the WebSocket: {exc.message}")
            return
        except aiohttp.ClientError as exc:
            await refuse_websocket(scope, send, 502, f"The app's server is not answering: {exc}")
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol, "headers": []})
            await _relay(upstream, receive, send)


async def _until_done_or_gone(pump: Coroutine[Any, Any, None], receive: Receive) -> None:
    pumping = asyncio.ensure_future(pump)
    watching = asyncio.ensure_future(wait_for_disconnect(receive))
    await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
    if pumping.done():
        watching.cancel()
        pumping.result()
        return
    pumping.cancel()  # leaving `async with` closes the upstream connection: the app sees it too
    with contextlib.suppress(asyncio.CancelledError):
        await pumping


async def _relay(upstream: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send) -> None:
    up = asyncio.ensure_future(_client_to_app(upstream, receive))
    down = asyncio.ensure_future(_app_to_client(upstream, send))
    done, pending = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        with contextlib.suppress(Exception):
            task.result()


async def _client_to_app(upstream: aiohttp.ClientWebSocketResponse, receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            reason = (message.get("reason") or "").encode()
            await upstream.close(code=message.get("code", 1000), message=reason)
            return
        if message.get("text") is not None:
            await upstream.send_str(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send_bytes(message["bytes"])


async def _app_to_client(upstream: aiohttp.ClientWebSocketResponse, send: Send) -> None:
    async for message in upstream:
        if message.type is aiohttp.WSMsgType.TEXT:
            await send({"type": "websocket.send", "text": message.data})
        elif message.type is aiohttp.WSMsgType.BINARY:
            await send({"type": "websocket.send", "bytes": message.data})
    # the app closed (or went away): pass its close code on
    code = upstream.close_code or 1011
    await send({"type": "websocket.close", "code": code, "reason": _close_reason(upstream)})


def _close_reason(upstream: aiohttp.ClientWebSocketResponse) -> str:
    exception = upstream.exception()
    return "" if exception is None else str(exception)[:120]


async def refuse_websocket(scope: Scope, send: Send, status: int, message: str) -> None:
    """Before accept: an HTTP answer when the server supports it, else close 1008/1011."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = encode_error("websocket_refused", message)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1008 if status < 500 else 1011, "reason": message[:120]})
