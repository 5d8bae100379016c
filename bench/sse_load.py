"""SSE load generator: concurrent streams over raw asyncio sockets, printed as one JSON object.

Each of `--concurrency` workers opens a connection, POSTs the body with `Accept:
text/event-stream` and `Connection: close`, reads the stream to EOF, and starts the next one
until `--duration` has passed. events/s = all `data:` events received / wall time of the run
(the streams still open at the deadline are read to the end and counted). A asyncio.Protocol
that only appends the bytes it receives keeps the client's own cost per event small; the JSON
reports the client's CPU use so a saturated load generator shows.

    python bench/sse_load.py --url http://127.0.0.1:8000/v4/p-local/bench/stream --events 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from time import perf_counter
from typing import Any, cast
from urllib.parse import urlsplit

STREAM_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: bytes


@dataclass(frozen=True)
class StreamResult:
    status: int
    events: int
    first_event_s: float | None
    error: str = ""


class _StreamProtocol(asyncio.Protocol):
    """Send the request, keep every byte received, resolve `done` when the server closes."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.chunks: list[bytes] = []
        self.first_event_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so cast instead of assert
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.first_event_at is None and b"data:" in data:
            self.first_event_at = perf_counter()
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def build_target(url: str, body: str) -> Target:
    parts = urlsplit(url)
    payload = body.encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "Accept: text/event-stream\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return Target(parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + payload)


def summarise_stream(raw: bytes, started: float, first_event_at: float | None) -> StreamResult:
    """Status code and `data:` event count of one raw HTTP response (chunk framing included)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    first = None if first_event_at is None else first_event_at - started
    return StreamResult(status, body.count(b"data:"), first)


async def read_stream(target: Target) -> StreamResult:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    started = perf_counter()
    try:
        transport, protocol = await loop.create_connection(
            lambda: _StreamProtocol(target.request, done), target.host, target.port
        )
    except OSError as exc:
        return StreamResult(0, 0, None, f"connect: {exc}")
    try:
        await asyncio.wait_for(done, STREAM_TIMEOUT_S)
    except asyncio.TimeoutError:
        transport.close()
        return StreamResult(0, 0, None, f"stream not closed within {STREAM_TIMEOUT_S:.0f} s")
    return summarise_stream(b"".join(protocol.chunks), started, protocol.first_event_at)


async def worker(target: Target, deadline: float) -> list[StreamResult]:
    results = []
    while perf_counter() < deadline:
        result = await read_stream(target)
        results.append(result)
        if result.error:
            await asyncio.sleep(0.01)  # a dead server must not turn this loop into a spin
    return results


async def run_load(
    target: Target, concurrency: int, duration_s: float, expected_events: int
) -> dict[str, Any]:
    cpu_before = _cpu_seconds()
    started = perf_counter()
    deadline = started + duration_s
    batches = await asyncio.gather(*(worker(target, deadline) for _ in range(concurrency)))
    wall_s = perf_counter() - started
    results = [result for batch in batches for result in batch]
    summary = summarise(results, wall_s, expected_events)
    return {**summary, "client_cpu": (_cpu_seconds() - cpu_before) / wall_s}


def summarise(results: list[StreamResult], wall_s: float, expected_events: int) -> dict[str, Any]:
    """Totals of one run; a stream that is not a 200 with `expected_events` events is bad."""
    bad = [r for r in results if r.status != 200 or r.events != expected_events]
    events = sum(result.events for result in results)
    firsts = sorted(r.first_event_s for r in results if r.first_event_s is not None)
    return {
        "streams": len(results),
        "events": events,
        "wall_s": wall_s,
        "events_per_s": events / wall_s if wall_s else 0.0,
        "bad_streams": len(bad),
        "statuses": dict(Counter(str(result.status) for result in results)),
        "errors": sorted({result.error for result in results if result.error}),
        "event_counts": dict(Counter(str(result.events) for result in results)),
        "first_event_p50_ms": _percentile(firsts, 50) * 1000,
        "first_event_p99_ms": _percentile(firsts, 99) * 1000,
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(pct) - 1]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    target = build_target(args.url, args.body)
    if args.warmup > 0:
        await run_load(target, args.concurrency, args.warmup, args.events)
    return await run_load(target, args.concurrency, args.duration, args.events)


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", type=int, default=1000, help="events each stream yields")
    parser.add_argument("--body", help='JSON body; default {"n": EVENTS}')
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    args.body = args.body or json.dumps({"n": args.events})
    print(json.dumps(_run(main_async(args))))


if __name__ == "__main__":
    main()
