"""Is the app's server up? A TCP connect or an HTTP GET on 127.0.0.1, never through a proxy."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    ok: bool  # ready / healthy
    connected: bool  # the port accepted a connection
    detail: str  # completes "it last ...": "answered 503 'warming up'"


async def probe_tcp(port: int, timeout: float) -> ProbeResult:
    """A TCP connection to 127.0.0.1:`port`, closed at once."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except asyncio.TimeoutError:
        return ProbeResult(False, False, f"did not accept a connection within {timeout:g} s")
    except OSError as exc:
        return ProbeResult(False, False, f"refused the connection ({exc.strerror or exc})")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, True, "accepted a connection")


async def probe_http(port: int, path: str, timeout: float) -> ProbeResult:
    """GET `path` on 127.0.0.1:`port` over a fresh connection (no proxy, no pool); 200 passes."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except asyncio.TimeoutError:
        return ProbeResult(False, False, f"did not accept a connection within {timeout:g} s")
    except OSError as exc:
        return ProbeResult(False, False, f"refused the connection ({exc.strerror or exc})")
    try:
        return await asyncio.wait_for(_exchange(reader, writer, port, path), timeout)
    except asyncio.TimeoutError:
        return ProbeResult(False, True, f"did not answer within {timeout:g} s")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        return ProbeResult(False, True, "answered something that is not HTTP")
    except OSError as exc:
        return ProbeResult(False, True, f"dropped the connection ({exc.strerror or exc})")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, path: str
) -> ProbeResult:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    writer.write(request.encode("latin-1"))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b"\r\n", 1)[0].split()[1])
    body = await reader.read(200)
    if b"chunked" in head.lower():  # drop the first chunk's size line
        body = body.split(b"\r\n", 1)[-1].split(b"\r\n", 1)[0]
    text = body.decode(errors="replace")[:100]
    return ProbeResult(status == 200, True, f"answered {status} {text!r}")
