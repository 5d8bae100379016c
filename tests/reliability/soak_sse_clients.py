"""1,000 concurrent SSE clients (fast: 100) on an endless stream for 60 s (fast: 6 s), then all
disconnect: no client sees an error or an early end, every one gets its events, the server's RSS
grows less than 100 MB, and after the disconnect its work is back to the baseline: no call in
flight (/metrics cortex_calls_in_flight), its open fds and threads (/proc) back where they were."""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from tests.reliability import harness, rawhttp
from tests.reliability.harness import Server, make_app, metrics_gauges, proc_status, wait_until
from tests.reliability.soak_backpressure import PeakRss

NAME = "soak_sse_clients"
CLIENTS = 1000
SECONDS = 60
INTERVAL = 0.5  # seconds between events of one stream
RAMP_SECONDS = {"full": 3.0, "fast": 0.5}  # clients connect over this long (seeded start times)
RSS_GROWTH_MB = 100
SLACK_FDS = 4  # the server may keep a few more fds open after (a log file, the store)


async def _client(port: int, path: str, delay: float, seconds: float) -> tuple[int, str]:
    """Events received and the problem seen ("" when none) by one client."""
    await asyncio.sleep(delay)
    request = rawhttp.request_bytes("POST", path, port, {"interval": INTERVAL}, accept="text/event-stream")
    events, buffer = 0, b""
    try:
        reader, writer = await rawhttp.open_connection(port)
    except OSError as exc:
        return 0, f"connect: {exc}"
    try:
        writer.write(request)
        await writer.drain()
        status, headers = await rawhttp.read_head(reader)
        if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
            return 0, f"status {status} {headers.get('content-type')}"
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except asyncio.TimeoutError:
                break
            if not data:
                return events, "the stream ended early"
            buffer += data
            if b"event: error" in buffer:
                return events, "event: error"
            events = buffer.count(b"data: ")
        return events, ""
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return events, f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()  # the disconnect


async def _crowd(
    server: Server, clients: int, seconds: float, ramp: float, seed: int
) -> tuple[list[tuple[int, str]], dict[str, float]]:
    """Every client's outcome, and the server seen mid-way (every client connected)."""
    rng = random.Random(seed)
    port, path = urlsplit(server.url).port or 0, urlsplit(server.base).path + "/endless"
    delays = [rng.uniform(0, ramp) for _ in range(clients)]
    # Each client stays `seconds` after its own start; all of them overlap for seconds - ramp.
    crowd = asyncio.gather(*(_client(port, path, delay, seconds) for delay in delays))
    await asyncio.sleep(ramp + (seconds - ramp) / 2)
    midway = await asyncio.to_thread(lambda: {**metrics_gauges(server.url), **proc_status(server.pid)})
    return await crowd, midway


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    clients = harness.scaled(CLIENTS, scale)
    seconds = SECONDS if scale == "full" else SECONDS / 10
    ramp = RAMP_SECONDS[scale]
    with tempfile.TemporaryDirectory(prefix="soak-sse-") as scratch:
        # response_grace_period is a stream's time limit too: well past the clients' stay.
        app = make_app(Path(scratch) / "app", concurrency=clients + 100, grace=int(seconds) + 60)
        server = Server(app, f"sqlite:///{scratch}/runs.db")
        try:
            server.wait_ready()
            asyncio.run(_crowd(server, 5, 1.0, 0.1, seed))  # warm: code paths touched
            time.sleep(1.0)
            baseline = proc_status(server.pid)
            with PeakRss(server.pid) as peak:
                outcomes, midway = asyncio.run(_crowd(server, clients, seconds, ramp, seed))

            def settled() -> dict[str, int] | None:
                now = proc_status(server.pid)
                calm = now["fds"] <= baseline["fds"] + SLACK_FDS and now["threads"] <= baseline["threads"]
                idle = metrics_gauges(server.url)["cortex_calls_in_flight"] == 0
                return now if calm and idle else None

            try:
                after = wait_until(settled, 15, "in-flight calls, fds and threads back to baseline", 0.2)
            except TimeoutError as exc:
                result.failures.append(str(exc))
                after = proc_status(server.pid)
            exit_code = server.terminate(30)
        finally:
            left = server.close()
    problems = Counter(problem for _, problem in outcomes if problem)
    expected = int(seconds / INTERVAL * 0.8)
    short = sum(1 for events, problem in outcomes if not problem and events < expected)
    result.figures.update(
        clients=clients,
        seconds=seconds,
        errors=sum(problems.values()),
        short_streams=short,
        events=sum(events for events, _ in outcomes),
        in_flight_midway=int(midway["cortex_calls_in_flight"]),
        fds_midway=int(midway["fds"]),
        rss_growth_mb=round((peak.peak_kb - baseline["rss_kb"]) / 1024, 1),
        rss_after_mb=round((after["rss_kb"] - baseline["rss_kb"]) / 1024, 1),
        fds=f"{baseline['fds']}->{after['fds']}",
        threads=f"{baseline['threads']}->{after['threads']}",
    )
    result.check(not problems, f"client errors: {dict(problems.most_common(5))}")
    result.check(short == 0, f"{short} clients got fewer than {expected} events")
    in_flight = midway["cortex_calls_in_flight"]
    result.check(in_flight >= clients, f"only {in_flight:g} streams in flight mid-way, for {clients} clients")
    result.check(result.figures["rss_growth_mb"] < RSS_GROWTH_MB, f"RSS grew over {RSS_GROWTH_MB} MB")
    result.check(exit_code == -15, f"exit code after SIGTERM: {exit_code}")
    result.check(not left, f"processes left running: {left}")
    return result


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
