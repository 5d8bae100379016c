"""RunWorker and AdmissionGate together: runs take a slot only once claimed, and share the limit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.concurrency import AdmissionGate, ThreadRunner
from cortex.discovery import build_spec
from cortex.errors import OverloadedError
from cortex.jobs.models import Run, RunRequest, RunStatus
from cortex.jobs.sqlite_store import SQLiteJobStore
from cortex.jobs.worker import RunWorker, WorkerTimings

NAMESPACE = "p-test/app"


@dataclass
class Probe:
    """What the functions under test saw: who started, and how many ran at once."""

    started: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0

    def begin(self, name: str) -> None:
        self.started.append(name)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def end(self) -> None:
        self.in_flight -= 1


@dataclass
class Harness:
    store: SQLiteJobStore
    gate: AdmissionGate
    worker: RunWorker
    probe: Probe

    async def submit(self, run_id: str, function: str = "echo", wake: bool = True) -> None:
        body = b'{"name": "%s"}' % run_id.encode()
        request = RunRequest(run_id, function, body, created_at=time.time(), ttl_seconds=3600)
        _, created = await self.store.submit(request, max_pending=1000)
        assert created
        if wake:
            self.worker.wake()

    async def get(self, run_id: str) -> Run:
        run = await self.store.get(run_id)
        assert run is not None, f"run {run_id} is gone"
        return run

    async def finished(self, run_id: str, timeout: float = 10) -> Run:
        async def is_terminal() -> Run | None:
            run = await self.get(run_id)
            return run if run.status.is_terminal else None

        return await eventually(is_terminal, timeout, f"run {run_id} to finish")


async def eventually(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` (sync or async) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def functions_of(probe: Probe, pause: float = 0.0) -> dict[str, Callable[..., Any]]:
    async def echo(name: str) -> str:
        probe.begin(name)
        try:
            await asyncio.sleep(pause)
        finally:
            probe.end()
        return name

    return {"echo": echo}


@asynccontextmanager
async def worker_for(
    tmp_path: Path,
    limit: int,
    max_waiting: int,
    timings: WorkerTimings,
    pause: float = 0.0,
    start: bool = True,
) -> AsyncIterator[Harness]:
    """A RunWorker over a real SQLite store and gate; stopped, and everything closed, afterwards."""
    store = SQLiteJobStore(tmp_path / "runs.db", NAMESPACE)
    await store.open()
    gate = AdmissionGate(limit, max_waiting)
    threads = ThreadRunner(4)
    probe = Probe()
    specs = {name: build_spec(name, func) for name, func in functions_of(probe, pause).items()}
    worker = RunWorker(store, specs.get, gate, threads, grace_seconds=30, max_attempts=3, timings=timings)
    if start:
        worker.start()
    try:
        yield Harness(store, gate, worker, probe)
    finally:
        await worker.stop()
        threads.shutdown()
        await store.close()


def quick(lease: float = 15.0, poll: float = 0.001) -> WorkerTimings:
    return dataclasses.replace(WorkerTimings.for_lease(lease), poll=poll)


async def run_waiting_behind_a_call(h: Harness, *run_ids: str) -> None:
    """Leave the first of `run_ids` claimed and waiting in line while a call holds the only slot.

    A call holds the slot as the worker starts, so the worker stands in line with a turn; a second
    call queues behind the turn. When the first call ends the turn comes and the slot goes on to the
    second call: the run the worker then claims must wait for it.
    """
    assert (h.gate.limit, h.gate.max_waiting) == (1, 1)
    for run_id in run_ids:
        await h.submit(run_id, wake=False)
    await h.gate.enter()  # the first call
    h.worker.start()
    await asyncio.sleep(0)  # the claim loop's first step: its turn in line
    second_call = asyncio.create_task(h.gate.enter())
    await asyncio.sleep(0)
    assert not second_call.done()  # in line, behind the worker's turn
    h.gate.leave()  # the first call ends
    await second_call
    await eventually(lambda: h.gate.waiting == 1, 5, "the claimed run to wait in line")
    run = await h.get(run_ids[0])
    assert (run.status, run.attempt) == (RunStatus.PROCESSING, 1)
    assert h.probe.started == []


def test_calls_are_never_refused_while_an_idle_worker_keeps_looking_for_runs(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        async with worker_for(tmp_path, limit=1, max_waiting=0, timings=quick(poll=0.0005)) as h:
            refused = admitted = 0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    await h.gate.enter()
                except OverloadedError:
                    refused += 1
                else:
                    admitted += 1
                    await asyncio.sleep(0)  # the call runs for a moment
                    h.gate.leave()
                await asyncio.sleep(0.0002)
            # The worker was looking all along: a run submitted without wake() is found at once.
            await h.submit("r1", wake=False)
            run = await h.finished("r1", timeout=1)
            assert (run.status, h.probe.started) == (RunStatus.COMPLETED, ["r1"])
            return refused, admitted

    refused, admitted = asyncio.run(main())
    assert refused == 0
    assert admitted > 100


def test_run_claimed_while_a_call_holds_the_slot_waits_with_its_lease_kept_then_runs(
    tmp_path: Path,
) -> None:
    lease = 0.6

    async def main() -> None:
        timings = quick(lease=lease)
        async with worker_for(tmp_path, limit=1, max_waiting=1, timings=timings, start=False) as h:
            await run_waiting_behind_a_call(h, "r1", "r2")
            deadline = time.monotonic() + 3 * lease  # the call outlasts the lease three times
            while time.monotonic() < deadline:
                waiting, queued = await h.get("r1"), await h.get("r2")
                assert (waiting.status, waiting.attempt) == (RunStatus.PROCESSING, 1)  # never re-queued
                assert waiting.lease_until is not None and waiting.lease_until > time.time()
                assert queued.status is RunStatus.PENDING  # one claimed run waits, no more
                await asyncio.sleep(0.05)
            assert h.probe.started == []
            assert (h.gate.active, h.gate.waiting) == (1, 1)
            h.gate.leave()  # the call ends: the run has its slot
            first, second = await h.finished("r1"), await h.finished("r2")
            assert (first.status, first.attempt, first.result_json) == (RunStatus.COMPLETED, 1, b'"r1"')
            assert (second.status, second.attempt) == (RunStatus.COMPLETED, 1)
            assert h.probe.started == ["r1", "r2"]
            await eventually(lambda: h.gate.active == 0, 5, "the runs to give their slot back")

    asyncio.run(main())


def test_worker_claims_no_run_while_its_runs_hold_every_slot(tmp_path: Path) -> None:
    async def main() -> None:
        async with worker_for(tmp_path, limit=1, max_waiting=1, timings=quick(), pause=0.3) as h:
            for run_id in ("r1", "r2", "r3"):
                await h.submit(run_id)
            await eventually(lambda: h.probe.started == ["r1"], 5, "r1 to start")
            samples = 0
            while True:
                second = await h.get("r2")  # read first: r1 was still running when it was read
                if (await h.get("r1")).status.is_terminal:
                    break
                # Left pending, r2 can still be taken by a server with a free slot.
                assert second.status is RunStatus.PENDING
                samples += 1
                await asyncio.sleep(0.02)
            assert samples > 3
            runs = [await h.finished(run_id) for run_id in ("r1", "r2", "r3")]
            assert [(run.status, run.attempt) for run in runs] == [(RunStatus.COMPLETED, 1)] * 3
            assert h.probe.started == ["r1", "r2", "r3"]

    asyncio.run(main())


def test_runs_and_calls_together_never_exceed_the_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with worker_for(tmp_path, limit=2, max_waiting=100, timings=quick(), pause=0.01) as h:
            probe = h.probe

            async def call(index: int) -> None:
                await asyncio.sleep(index * 0.003)
                await h.gate.enter()
                try:
                    assert h.gate.active <= 2
                    probe.begin(f"call-{index}")
                    await asyncio.sleep(0.01)
                    probe.end()
                finally:
                    h.gate.leave()

            calls = [asyncio.create_task(call(index)) for index in range(40)]
            for index in range(15):
                await h.submit(f"r{index}")
                await asyncio.sleep(0.005)
            await asyncio.gather(*calls)
            runs = [await h.finished(f"r{index}") for index in range(15)]
            assert {run.status for run in runs} == {RunStatus.COMPLETED}
            assert probe.peak == 2  # reached, never passed
            await eventually(lambda: (h.gate.active, h.gate.waiting) == (0, 0), 5, "an idle gate")

    asyncio.run(main())


def test_cancelling_a_run_waiting_for_a_slot_gives_back_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with worker_for(tmp_path, limit=1, max_waiting=1, timings=quick(), start=False) as h:
            await run_waiting_behind_a_call(h, "r1")
            run, before = await h.worker.cancel("r1")
            assert run is not None
            assert (before, run.status) == (RunStatus.PROCESSING, RunStatus.CANCELLED)
            await eventually(lambda: "r1" not in h.worker.running, 5, "the run's task to end")
            assert (h.gate.active, h.gate.waiting) == (1, 0)  # the call's slot, and nobody in line
            h.gate.leave()  # the call ends
            assert (h.gate.active, h.gate.has_room) == (0, True)
            await h.submit("r2")  # the worker carries on
            assert (await h.finished("r2")).status is RunStatus.COMPLETED
            assert h.probe.started == ["r2"]
            await eventually(lambda: h.gate.active == 0, 5, "r2 to give its slot back")

    asyncio.run(main())


def test_stop_returns_at_once_when_a_run_waits_for_a_slot(tmp_path: Path) -> None:
    async def main() -> float:
        async with worker_for(tmp_path, limit=1, max_waiting=1, timings=quick(), start=False) as h:
            await run_waiting_behind_a_call(h, "r1")
            started = time.monotonic()
            await asyncio.wait_for(h.worker.stop(drain_seconds=30), 5)
            elapsed = time.monotonic() - started
            assert h.worker.running == {}
            assert (h.gate.active, h.gate.waiting) == (1, 0)  # only the call's slot is taken
            run = await h.get("r1")
            assert (run.status, run.attempt) == (RunStatus.PROCESSING, 1)  # runs again after its lease
            assert h.probe.started == []
            h.gate.leave()
            assert h.gate.active == 0
            return elapsed

    assert asyncio.run(main()) < 1.0


def test_an_idle_worker_looks_for_runs_only_when_woken_or_at_its_poll_interval(tmp_path: Path) -> None:
    async def main() -> None:
        async with worker_for(tmp_path, limit=1, max_waiting=0, timings=quick(poll=30)) as h:
            await asyncio.sleep(0.05)  # its first look found nothing
            await h.submit("r1", wake=False)
            for _ in range(100):  # calls come and go: none of them makes the worker look again
                await h.gate.enter()
                await asyncio.sleep(0.002)
                h.gate.leave()
            assert (await h.get("r1")).status is RunStatus.PENDING
            h.worker.wake()
            assert (await h.finished("r1", timeout=2)).status is RunStatus.COMPLETED

    asyncio.run(main())
