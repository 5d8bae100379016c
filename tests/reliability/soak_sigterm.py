"""SIGTERM under load: 40 sync calls (3 s each), 40 streams (30 chunks over 3 s) and 200 async
runs (2 s each) in flight or waiting (fast: 4, 4, 20) when the server gets SIGTERM. Every sync
call answers 200 with its result, every stream ends cleanly with all its chunks, the server exits
within response_grace_period, the runs that were running finish before it exits, the released
ones complete after a restart, and none is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.reliability import harness
from tests.reliability.harness import Server, make_app, metrics_gauges, wait_until
from tests.reliability.runs import audit, poll_all, starts_per_run, store_attempts, unfinished

NAME = "soak_sigterm"
SYNC_CALLS, STREAMS, RUNS = 40, 40, 200
CALL_MS = 3000.0
CHUNKS, CHUNK_INTERVAL = 30, 0.1
RUN_MS = 2000.0
GRACE = 20
MAX_ATTEMPTS = 3
ENV = {"CORTEX_RUN_LEASE_SECONDS": "1", "CORTEX_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}


async def _stream(client: httpx.AsyncClient, base: str) -> str:
    """ "" when the stream brought every chunk and ended cleanly, else what went wrong."""
    body = {"count": CHUNKS, "interval": CHUNK_INTERVAL}
    seen: list[int] = []
    try:
        headers = {"Accept": "text/event-stream"}
        async with client.stream("POST", f"{base}/ticks", json=body, headers=headers) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            async for line in response.aiter_lines():
                if line.startswith("event: error"):
                    return "event: error"
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["i"])
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after {len(seen)} chunks: {exc}"
    return "" if seen == list(range(CHUNKS)) else f"chunks {seen[:3]}..{seen[-3:]} ({len(seen)})"


async def _call(client: httpx.AsyncClient, base: str) -> str:
    try:
        response = await client.post(f"{base}/block", json={"ms": CALL_MS})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    ok = response.status_code == 200 and response.json()["result"] == {"slept_ms": CALL_MS}
    return "" if ok else f"{response.status_code} {response.text[:200]}"


async def _load(server: Server, counts: tuple[int, int, int], trace: Path) -> dict[str, Any]:
    """Start the load, SIGTERM the server once it is all under way, collect what clients saw."""
    calls, streams, runs = counts
    base = server.base
    limits = httpx.Limits(max_connections=calls + streams + 20)
    async with httpx.AsyncClient(timeout=GRACE + 30, limits=limits) as client:
        call_tasks = [asyncio.ensure_future(_call(client, base)) for _ in range(calls)]
        stream_tasks = [asyncio.ensure_future(_stream(client, base)) for _ in range(streams)]

        def in_flight() -> float:
            return metrics_gauges(server.url)["cortex_calls_in_flight"]

        # The calls and streams hold their slots first; the runs get what is left, the rest wait.
        await asyncio.to_thread(wait_until, lambda: in_flight() >= calls + streams, 30, "calls and streams")
        body = {"ms": RUN_MS, "trace": str(trace)}
        async with httpx.AsyncClient(timeout=30) as submitter:
            submitted = await asyncio.gather(
                *(submitter.post(f"{base}/work", params={"async": "true"}, json=body) for _ in range(runs))
            )
        run_ids = [r.json()["run_id"] for r in submitted if r.status_code == 202]
        await asyncio.to_thread(wait_until, lambda: any(trace.iterdir()), 30, "a run to start")
        await asyncio.sleep(0.5)
        gauges = await asyncio.to_thread(metrics_gauges, server.url)
        started_at_term = set(starts_per_run(trace))
        os.kill(server.pid, signal.SIGTERM)
        term_at = time.monotonic()
        exit_code = await asyncio.to_thread(server.terminate, GRACE + 15)
        exited_after = time.monotonic() - term_at
        call_problems = [p for p in await asyncio.gather(*call_tasks) if p]
        stream_problems = [p for p in await asyncio.gather(*stream_tasks) if p]
    return {
        "run_ids": run_ids,
        "started_at_term": started_at_term,
        "in_flight_at_term": gauges["cortex_calls_in_flight"],
        "exit_code": exit_code,
        "exited_after": exited_after,
        "call_problems": call_problems,
        "stream_problems": stream_problems,
    }


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    counts = (harness.scaled(SYNC_CALLS, scale), harness.scaled(STREAMS, scale), harness.scaled(RUNS, scale))
    # Room for the calls, the streams and a few runs: the other runs wait, and are released.
    concurrency = counts[0] + counts[1] + harness.scaled(20, scale)
    left: list[int] = []
    with tempfile.TemporaryDirectory(prefix="soak-sigterm-") as scratch:
        app = make_app(Path(scratch) / "app", concurrency=concurrency, grace=GRACE)
        store = f"sqlite:///{scratch}/runs.db"
        trace = Path(scratch) / "trace"
        trace.mkdir()
        first = Server(app, store, ENV)
        second: Server | None = None
        try:
            first.wait_ready()
            seen = asyncio.run(_load(first, counts, trace))
            left += first.close()
            second = Server(app, store, ENV)
            second.wait_ready()
            wait_until(lambda: unfinished(second.url) == 0, 120, "the released runs to complete", 0.2)
            polled = poll_all(second.base, seen["run_ids"])
            second_exit = second.terminate(30)
        finally:
            left += first.close()
            if second is not None:
                left += second.close()
        starts = starts_per_run(trace)
        attempts = store_attempts(store, "soak", seen["run_ids"])
    audit(result, seen["run_ids"], polled, starts, attempts, MAX_ATTEMPTS)
    drained = [r for r in seen["started_at_term"] if polled[r].get("result", {}).get("pid") == first.pid]
    released = [r for r, view in polled.items() if view.get("result", {}).get("pid") == second.pid]
    result.figures.update(
        sync_calls=counts[0],
        streams=counts[1],
        in_flight_at_term=int(seen["in_flight_at_term"]),
        running_runs_at_term=len(seen["started_at_term"]),
        drained_runs=len(drained),
        released_runs=len(released),
        ran_during_drain=len(polled) - len(released) - len(drained),
        call_errors=len(seen["call_problems"]),
        stream_errors=len(seen["stream_problems"]),
        exited_after_s=round(seen["exited_after"], 1),
    )
    result.check(not seen["call_problems"], f"sync calls: {seen['call_problems'][:3]}")
    result.check(not seen["stream_problems"], f"streams: {seen['stream_problems'][:3]}")
    result.check(len(seen["run_ids"]) == counts[2], f"{len(seen['run_ids'])} of {counts[2]} runs accepted")
    result.check(seen["exit_code"] == -15, f"exit code after SIGTERM: {seen['exit_code']}")
    result.check(seen["exited_after"] < GRACE, f"exited {seen['exited_after']:.1f} s after SIGTERM")
    undrained = seen["started_at_term"] - set(drained)
    result.check(not undrained, f"{len(undrained)} run(s) running at SIGTERM did not finish before exit")
    result.check(bool(released), "no run was released at SIGTERM (the scenario did not test it)")
    result.check(second_exit == -15, f"exit code of the restarted server: {second_exit}")
    result.check(not left, f"processes left running: {left}")
    return result


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
