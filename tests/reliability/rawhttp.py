"""A minimal HTTP/1.1 client on asyncio streams, for crowds (1,000 connections from one process
is cheap this way): open every connection first, then send every request at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""  # a transport problem: refused, reset, closed early


def request_bytes(
    method: str, url_path: str, port: int, body: Any, accept: str = "application/json"
) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"{method} {url_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def open_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


async def exchange(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes, start: asyncio.Event
) -> Answer:
    """Wait for `start`, send `request`, read the whole answer (the server closes after it)."""
    reader, writer = connection
    answer = Answer()
    try:
        await start.wait()
        writer.write(request)
        await writer.drain()
        answer.status, answer.headers = await read_head(reader)
        answer.body = await reader.read()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answer


def decode_chunked(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, and whether it ended with the zero-length chunk."""
    payload, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return payload, True
        payload, rest = payload + rest[:size], rest[size + 2 :]
    return payload, False


def sse_events(payload: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each SSE event in `payload` ("message" when unnamed)."""
    events = []
    for block in payload.decode().split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events
