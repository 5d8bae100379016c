"""Wire bodies (pure) and the few raw ASGI receives and sends the hot path needs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic_core import PydanticSerializationError
from starlette.types import Receive, Scope, Send

from cortex.errors import (
    ClientDisconnectedError,
    PayloadTooLargeError,
    RequestError,
    ResultNotSerializableError,
)
from cortex.serialization import encode_json

Headers = list[tuple[bytes, bytes]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer the stream
]


def encode_result(run_id: str, run_time_ms: float, result: Any, function: str) -> tuple[int, bytes]:
    """The 200 envelope; a dict result with an int `status_code` sets the HTTP status."""
    envelope = {"run_id": run_id, "run_time_ms": round(run_time_ms, 3), "result": result}
    try:
        body = encode_json(envelope)
    except PydanticSerializationError as exc:
        raise ResultNotSerializableError(
            f"{function}() returned a value that cannot be written as JSON ({exc}). Return "
            "JSON types, pydantic models or dataclasses."
        ) from None
    return result_status(result), body


def result_status(result: Any) -> int:
    if isinstance(result, dict):
        status = result.get("status_code")
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            return status
    return 200


def encode_failure(run_id: str, run_time_ms: float, error_type: str, message: str) -> bytes:
    """The envelope of a call that ran and failed (500) or ran out of time (504)."""
    error = {"type": error_type, "message": message}
    return encode_json({"run_id": run_id, "run_time_ms": round(run_time_ms, 3), "error": error})


def encode_request_error(exc: RequestError) -> bytes:
    """A call rejected before it ran: `{"error": {"code", "message", "details"?}}`."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details:
        error["details"] = exc.details
    return encode_json({"error": error})


def encode_error(code: str, message: str) -> bytes:
    return encode_json({"error": {"code": code, "message": message}})


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    run_id: str | None,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    headers = [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))]
    if run_id is not None:
        headers.append((b"x-request-id", run_id.encode()))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client has gone (the request body must already have been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_request(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body (413 past `limit`, sized or chunked) and whether SSE was asked for."""
    wants_sse = False
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise payload_too_large(limit)
        if name == b"accept" and b"text/event-stream" in value:
            wants_sse = True
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnectedError
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise payload_too_large(limit)
        return body, wants_sse
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks), wants_sse


def payload_too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than {limit} bytes (CORTEX_MAX_BODY_BYTES). "
        "Send less, or raise the limit."
    )
