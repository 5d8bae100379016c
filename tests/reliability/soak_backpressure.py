"""1,000 simultaneous sync calls (fast: 100), three waves, against replica_concurrency = 4 and
CORTEX_MAX_QUEUE = 16: every answer is a 2xx, or a 429 with Retry-After; no 5xx, no dropped
connection; RSS does not grow from wave to wave; nothing is left in flight or queued after."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.reliability import harness, rawhttp
from tests.reliability.harness import Server, make_app, metrics_gauges, proc_status, wait_until

NAME = "soak_backpressure"
CALLS = 1000
WAVES = 3
CONCURRENCY = 4
QUEUE = 16
CALL_MS = 50.0
PEAK_GROWTH_MB = 100  # RSS of the server above its warm baseline, at the worst moment
WAVE_GROWTH_MB = 16  # RSS after the last wave above RSS after the first: a leak would show here


async def _wave(port: int, path: str, calls: int) -> list[rawhttp.Answer]:
    request = rawhttp.request_bytes("POST", path, port, {"ms": CALL_MS})
    connections = await asyncio.gather(*(rawhttp.open_connection(port) for _ in range(calls)))
    start = asyncio.Event()
    answers = asyncio.gather(*(rawhttp.exchange(c, request, start) for c in connections))
    await asyncio.sleep(0.1)  # every exchange waits on the event: then all requests go at once
    start.set()
    return await answers


class PeakRss:
    """Samples a process's RSS every 20 ms from a thread; the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, proc_status(self.pid)["rss_kb"])
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    calls = harness.scaled(CALLS, scale)
    env = {"CORTEX_MAX_QUEUE": str(QUEUE)}
    with tempfile.TemporaryDirectory(prefix="soak-backpressure-") as scratch:
        app = make_app(Path(scratch) / "app", concurrency=CONCURRENCY)
        server = Server(app, f"sqlite:///{scratch}/runs.db", env)
        try:
            server.wait_ready()
            port, path = urlsplit(server.url).port or 0, urlsplit(server.base).path + "/block"
            for _ in range(CONCURRENCY * 2):  # warm: threads started, code paths touched
                httpx.post(f"{server.base}/block", json={"ms": 1}, timeout=30).raise_for_status()
            baseline = proc_status(server.pid)
            answers: list[rawhttp.Answer] = []
            after_wave = []
            with PeakRss(server.pid) as peak:
                for _ in range(WAVES):
                    answers += asyncio.run(_wave(port, path, calls))
                    after_wave.append(proc_status(server.pid)["rss_kb"])
            try:
                wait_until(lambda: _idle(server.url), 10, "no call in flight or queued")
            except TimeoutError as exc:
                result.failures.append(str(exc))
            exit_code = server.terminate(30)
        finally:
            left = server.close()
    _judge(result, answers, calls * WAVES)
    result.figures.update(
        rss_base_mb=round(baseline["rss_kb"] / 1024, 1),
        rss_peak_growth_mb=round((peak.peak_kb - baseline["rss_kb"]) / 1024, 1),
        rss_wave_growth_mb=round((after_wave[-1] - after_wave[0]) / 1024, 1),
    )
    figures = result.figures
    result.check(figures["rss_peak_growth_mb"] < PEAK_GROWTH_MB, f"RSS grew over {PEAK_GROWTH_MB} MB")
    result.check(figures["rss_wave_growth_mb"] < WAVE_GROWTH_MB, f"RSS grew {WAVE_GROWTH_MB}+ MB over waves")
    result.check(exit_code == -15, f"exit code after SIGTERM: {exit_code}")
    result.check(not left, f"processes left running: {left}")
    return result


def _idle(url: str) -> bool:
    gauges = metrics_gauges(url)
    return gauges["cortex_calls_in_flight"] + gauges["cortex_calls_queued"] == 0


def _judge(result: harness.Result, answers: list[rawhttp.Answer], expected: int) -> None:
    statuses = Counter(answer.status for answer in answers if not answer.error)
    errors = Counter(answer.error.split(":")[0] for answer in answers if answer.error)
    no_retry_after = sum(1 for a in answers if a.status == 429 and not a.headers.get("retry-after"))
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    result.figures.update(
        calls=len(answers),
        ok_2xx=ok,
        rejected_429=statuses[429],
        server_5xx=sum(n for status, n in statuses.items() if status >= 500),
        other=sum(n for status, n in statuses.items() if not (200 <= status < 300 or status in (429,))),
        transport_errors=sum(errors.values()),
    )
    result.check(len(answers) == expected, f"{len(answers)} answers for {expected} calls")
    result.check(not errors, f"transport errors: {dict(errors)}")
    result.check(result.figures["other"] == 0, f"statuses other than 2xx/429: {dict(statuses)}")
    result.check(no_retry_after == 0, f"{no_retry_after} 429s without Retry-After")
    # At least the calls the server can hold at once (running + queued) succeed in each wave.
    result.check(ok >= (CONCURRENCY + QUEUE) * WAVES, f"only {ok} calls succeeded")


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
