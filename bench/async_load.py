"""Async-run load generator: submit N runs, wait until every one has ended, print one JSON object.

1. Submit: `--concurrency` keep-alive HTTP/1.1 connections (raw asyncio streams, uvloop) POST the
   body to URL?async=true until `--runs` requests were answered; a 202 `{"run_id", "status":
   "pending"}` is accepted, anything else an error counted by status.
2. Wait: every `--poll-interval` s one connection asks `GET .../runs?status=pending&limit=1` and
   `...status=processing&limit=1`; the store is the bench's own, fresh one, so both lists empty
   means every submitted run has ended. Two cheap indexed reads per poll keep the poller from
   competing with the worker for the store's single thread.
3. Collect: page `GET .../runs?limit=100` through `next_cursor` and check that each accepted run
   completed with `--expect` as its result.

runs/s = runs completed / (last `completed_at` - the moment the first submit was sent), both on
this machine's wall clock; latency = `completed_at - created_at` of each run (server clock).

    python bench/async_load.py --url http://127.0.0.1:8000/v4/p-local/bench/predict --runs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 30.0
PAGE_LIMIT = 100


class HttpError(Exception):
    """The server's reply could not be read as an HTTP/1.1 response with a Content-Length."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    netloc: str
    function_path: str  # /v4/{project}/{app}/{function}
    runs_path: str  # /v4/{project}/{app}/runs


@dataclass
class SubmitTally:
    """What the submit phase got back: accepted run ids, and every other reply by status."""

    run_ids: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    bad_replies: list[str] = field(default_factory=list)
    next_index: int = 0


def parse_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return Endpoint(
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        parts.netloc,
        path,
        f"{path.rsplit('/', 1)[0]}/runs",
    )


def build_request(endpoint: Endpoint, method: str, target: str, body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {endpoint.netloc}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection; (status, body) of its reply."""
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise HttpError(f"bad status line {lines[0]!r}")
    length = next(
        (line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")), None
    )
    if length is None:
        raise HttpError(f"HTTP {status_line[1]} without Content-Length")
    body = await asyncio.wait_for(reader.readexactly(int(length)), REQUEST_TIMEOUT_S)
    return int(status_line[1]), body


async def submit_worker(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    request: bytes,
    runs: int,
    tally: SubmitTally,
) -> None:
    reader, writer = connection
    try:
        while tally.next_index < runs:
            tally.next_index += 1
            status, body = await exchange(reader, writer, request)
            tally.statuses[str(status)] += 1
            run_id = _accepted_run_id(status, body)
            if run_id is not None:
                tally.run_ids.append(run_id)
            elif status == 202:
                tally.bad_replies.append(body[:200].decode("latin-1"))
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, HttpError) as exc:
        tally.statuses[f"error: {type(exc).__name__}"] += 1
    finally:
        writer.close()


def _accepted_run_id(status: int, body: bytes) -> str | None:
    """The run id of a well-formed 202 `{"run_id", "status": "pending"}`, else None."""
    if status != 202:
        return None
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or payload.get("status") != "pending":
        return None
    run_id = payload.get("run_id")
    return run_id if isinstance(run_id, str) else None


async def submit_all(
    endpoint: Endpoint, body: bytes, runs: int, concurrency: int
) -> tuple[SubmitTally, float, float]:
    """(tally, wall-clock time the first submit was sent, seconds until the last reply)."""
    connections = [await asyncio.open_connection(endpoint.host, endpoint.port) for _ in range(concurrency)]
    request = build_request(endpoint, "POST", f"{endpoint.function_path}?async=true", body)
    tally = SubmitTally()
    first_sent = time.time()
    started = time.perf_counter()
    await asyncio.gather(*(submit_worker(c, request, runs, tally) for c in connections))
    return tally, first_sent, time.perf_counter() - started


class Poller:
    """One keep-alive connection for GETs under .../runs; every reply must be a JSON 200."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.requests = 0
        self._connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, query: str) -> dict[str, Any]:
        if self._connection is None:
            self._connection = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
        reader, writer = self._connection
        target = f"{self.endpoint.runs_path}?{query}"
        self.requests += 1
        status, body = await exchange(reader, writer, build_request(self.endpoint, "GET", target))
        if status != 200:
            raise HttpError(f"GET {target}: HTTP {status}: {body[:200]!r}")
        payload: dict[str, Any] = json.loads(body)
        return payload

    def close(self) -> None:
        if self._connection is not None:
            self._connection[1].close()

    async def all_ended(self) -> bool:
        for status in ("pending", "processing"):
            if (await self.get(f"status={status}&limit=1"))["runs"]:
                return False
        return True

    async def wait_until_all_ended(self, timeout_s: float, interval_s: float) -> bool:
        deadline = time.perf_counter() + timeout_s
        while not await self.all_ended():
            if time.perf_counter() >= deadline:
                return False
            await asyncio.sleep(interval_s)
        return True

    async def every_run(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = f"limit={PAGE_LIMIT}" + ("" if cursor is None else f"&cursor={cursor}")
            page = await self.get(query)
            runs.extend(page["runs"])
            cursor = page["next_cursor"]
            if cursor is None:
                return runs


def parse_time(value: str) -> float:
    """UNIX seconds of the server's ISO 8601 UTC times (`...Z`; Python 3.10 lacks `Z` parsing)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(pct) - 1]


def summarise(
    tally: SubmitTally,
    runs: list[dict[str, Any]],
    first_sent: float,
    submit_s: float,
    expected: Any,
) -> dict[str, Any]:
    """Throughput, latency and every kind of error of one end-to-end run."""
    accepted = set(tally.run_ids)
    ours = {run["run_id"]: run for run in runs if run["run_id"] in accepted}
    done = [r for r in ours.values() if r["status"] == "completed" and r.get("result") == expected]
    wrong = [r for r in ours.values() if r["status"] != "completed" or r.get("result") != expected]
    missing = len(tally.run_ids) - len(ours)
    unfinished = sum(1 for r in wrong if r["status"] in ("pending", "processing"))
    ends = [parse_time(r["completed_at"]) for r in done]
    latencies = sorted(parse_time(r["completed_at"]) - parse_time(r["created_at"]) for r in done)
    wall_s = max(ends) - first_sent if ends else 0.0
    refused = sum(n for status, n in tally.statuses.items() if status != "202")
    return {
        "runs": sum(tally.statuses.values()),
        "accepted": len(tally.run_ids),
        "statuses": dict(tally.statuses),
        "submit_s": submit_s,
        "submit_per_s": len(tally.run_ids) / submit_s if submit_s else 0.0,
        "completed": len(done),
        "wall_s": wall_s,
        "runs_per_s": len(done) / wall_s if wall_s > 0 else 0.0,
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "latency_max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "refused": refused,
        "bad_replies": len(tally.bad_replies),
        "unfinished": unfinished + missing,
        "failed": len(wrong) - unfinished,
        "failed_examples": [{k: r.get(k) for k in ("status", "result", "error")} for r in wrong[:3]],
        "errors": refused + len(tally.bad_replies) + len(wrong) + missing,
    }


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = parse_endpoint(args.url)
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    tally, first_sent, submit_s = await submit_all(endpoint, args.body.encode(), args.runs, args.concurrency)
    poller = Poller(endpoint)
    try:
        ended = await poller.wait_until_all_ended(args.timeout, args.poll_interval)
        runs = await poller.every_run()
    finally:
        poller.close()
    result = summarise(tally, runs, first_sent, submit_s, json.loads(args.expect))
    result["timed_out"] = not ended
    result["poll_requests"] = poller.requests
    result["client_cpu"] = (_cpu_seconds() - cpu_before) / (time.perf_counter() - started)
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the function's URL, without ?async=true")
    parser.add_argument("--body", default='{"x": 1}', help="JSON body of every submit")
    parser.add_argument("--expect", default="2", help="JSON of the result every run must complete with")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64, help="submits in flight")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for all runs to end")
    parser.add_argument("--poll-interval", type=float, default=0.02)
    args = parser.parse_args()
    print(json.dumps(_run(run_load(args))))


if __name__ == "__main__":
    main()
