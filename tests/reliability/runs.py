"""Async runs in bulk: submit each until a 202 (one Idempotency-Key per run, so a retry after a
dropped answer never makes a second run), wait for the store to have nothing unfinished, then
audit every run: found, terminal, how it ended, how often it started, what attempt it reached."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cortex.jobs.store import store_from_url
from tests.reliability.harness import PROJECT, Result, metrics_gauges

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Submission:
    """What the submitter did: run ids by index, and the answers it had to retry past."""

    run_ids: dict[int, str] = field(default_factory=dict)
    retried: Counter[str] = field(default_factory=Counter)
    error: str = ""


class Submitter:
    """Submits `bodies` to whichever bases `targets()` names, paced over `seconds`, from a thread.

    A transport error, a 5xx or a 429 is retried (same Idempotency-Key) until a 202 arrives.
    """

    def __init__(
        self,
        targets: Callable[[], list[str]],
        function: str,
        bodies: list[dict[str, Any]],
        seconds: float,
        seed: int,
        params: dict[str, str] | None = None,
        concurrency: int = 16,
    ) -> None:
        self.targets = targets
        self.function = function
        self.bodies = bodies
        self.seconds = seconds
        self.params = {"async": "true", **(params or {})}
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.submission = Submission()
        self.key_prefix = f"soak-{seed}-{time.time_ns()}"
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def join(self, timeout: float) -> Submission:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.submission.error = f"the submitter was still going after {timeout:g} s"
        return self.submission

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    async def _run(self) -> None:
        started = time.monotonic()
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:

            async def one(index: int) -> None:
                due = started + index * self.seconds / len(self.bodies)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                async with gate:
                    self.submission.run_ids[index] = await self._submit(client, index)

            try:
                await asyncio.gather(*(one(i) for i in range(len(self.bodies))))
            except Exception as exc:  # reported as a failure of the scenario, not a crash
                self.submission.error = f"{type(exc).__name__}: {exc}"

    async def _submit(self, client: httpx.AsyncClient, index: int) -> str:
        headers = {"Idempotency-Key": f"{self.key_prefix}-{index}"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            bases = self.targets()
            if not bases:
                await asyncio.sleep(0.05)
                continue
            base = self.rng.choice(bases)
            try:
                response = await client.post(
                    f"{base}/{self.function}", params=self.params, json=self.bodies[index], headers=headers
                )
            except httpx.TransportError as exc:
                self.submission.retried[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 202:
                run_id: str = response.json()["run_id"]
                return run_id
            if response.status_code < 500 and response.status_code != 429:
                raise AssertionError(f"run {index}: {response.status_code} {response.text[:300]}")
            self.submission.retried[str(response.status_code)] += 1
            await asyncio.sleep(0.05)
        raise TimeoutError(f"run {index} was not accepted within 120 s")


def unfinished(url: str) -> int:
    """Pending plus processing runs, as the store counts them (the runs-by-status gauge)."""
    gauges = metrics_gauges(url)
    return int(sum(gauges.get(f'cortex_runs{{status="{s}"}}', 0) for s in ("pending", "processing")))


async def _poll_all(base: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(run_id: str) -> tuple[str, dict[str, Any]]:
            async with gate:
                response = await client.get(f"{base}/runs/{run_id}")
            if response.status_code == 404:
                return run_id, {"status": "missing", "code": response.json()["error"]["code"]}
            view: dict[str, Any] = response.json()
            return run_id, view

        return dict(await asyncio.gather(*(one(run_id) for run_id in run_ids)))


def poll_all(base: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every run as a poll shows it; a 404 becomes {"status": "missing"}."""
    return asyncio.run(_poll_all(base, run_ids))


async def _attempts(store: str, app_name: str, run_ids: list[str]) -> dict[str, int]:
    job_store = store_from_url(store, Path("/nonexistent"), f"{PROJECT}/{app_name}", strict_durability=False)
    await job_store.open()
    try:
        found = {run_id: await job_store.get(run_id) for run_id in run_ids}
    finally:
        await job_store.close()
    return {run_id: run.attempt for run_id, run in found.items() if run is not None}


def store_attempts(store: str, app_name: str, run_ids: list[str]) -> dict[str, int]:
    """Each run's attempt number as the store holds it (read with Cortex's own store class)."""
    return asyncio.run(_attempts(store, app_name, run_ids))


def starts_per_run(trace: Path) -> Counter[str]:
    """How many times `work` started for each run (one file per start: RUN_ID.PID.RANDOM)."""
    return Counter(path.name.split(".", 1)[0] for path in trace.iterdir())


def audit(
    result: Result,
    accepted: list[str],
    polled: dict[str, dict[str, Any]],
    starts: Counter[str],
    attempts: dict[str, int],
    max_attempts: int,
) -> None:
    """Figures and checks common to every scenario that loses no run."""
    statuses = Counter(view["status"] for view in polled.values())
    errors = Counter(view["error"]["type"] for view in polled.values() if view.get("error"))
    interrupted = [r for r, view in polled.items() if view.get("error", {}).get("type") == "Interrupted"]
    lost = [run_id for run_id in accepted if polled[run_id]["status"] == "missing"]
    open_runs = [run_id for run_id, view in polled.items() if view["status"] not in (*TERMINAL, "missing")]
    result.figures.update(
        accepted=len(accepted),
        completed=statuses["completed"],
        lost=len(lost),
        not_terminal=len(open_runs),
        failed=statuses["failed"],
        interrupted=len(interrupted),
        max_starts=max(starts.values(), default=0),
        max_attempt=max(attempts.values(), default=0),
        restarted=sum(count > 1 for count in starts.values()),
    )
    duplicates = len(accepted) - len(set(accepted))
    result.check(not duplicates, f"{duplicates} duplicate run ids")
    result.check(not lost, f"{len(lost)} accepted run(s) lost (404), e.g. {lost[:3]}")
    result.check(not open_runs, f"{len(open_runs)} run(s) not terminal, e.g. {open_runs[:3]}")
    other_errors = {kind: n for kind, n in errors.items() if kind != "Interrupted"}
    result.check(not other_errors, f"runs failed: {other_errors}")
    # A run may fail as Interrupted only after the server died under it max_attempts times.
    early = [run_id for run_id in interrupted if attempts.get(run_id, 0) < max_attempts]
    result.check(not early, f"{len(early)} run(s) Interrupted before {max_attempts} attempts: {early[:3]}")
    over = {run_id: n for run_id, n in attempts.items() if n > max_attempts}
    result.check(not over, f"attempt over CORTEX_MAX_ATTEMPTS={max_attempts}: {dict(list(over.items())[:3])}")
    many = {run_id: n for run_id, n in starts.items() if n > max_attempts}
    result.check(not many, f"runs started more than {max_attempts} times: {dict(list(many.items())[:3])}")
    never = [r for r, view in polled.items() if view["status"] == "completed" and starts[r] == 0]
    result.check(not never, f"{len(never)} run(s) completed without starting: {never[:3]}")
