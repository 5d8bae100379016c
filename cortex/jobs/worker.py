"""Claim -> invoke -> record: runs async runs under leases, recovers them after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError

from cortex.concurrency import AdmissionGate, DeadlineExceeded, ThreadRunner, run_with_deadline
from cortex.discovery import FunctionKind, FunctionSpec
from cortex.errors import RequestError
from cortex.invocation import invoke, open_stream, parse_arguments
from cortex.jobs.models import Outcome, Run, RunError, RunStatus
from cortex.jobs.store import JobStore
from cortex.logs import current_run_id, log_call
from cortex.openai_compat.aggregate import apply_shape
from cortex.openai_compat.models import ResultShape
from cortex.serialization import encode_json
from cortex.streaming import encode_event

logger = logging.getLogger("cortex.jobs")

Lookup = Callable[[str], FunctionSpec | None]


@dataclass(frozen=True)
class WorkerTimings:
    """Seconds. A lease outlives a few missed heartbeats; recovery looks for expired ones."""

    lease: float = 15.0
    heartbeat: float = 5.0
    poll: float = 1.0  # how often to look for runs another process submitted
    recover: float = 2.0
    sweep: float = 30.0
    event_batch: float = 0.05  # a generator's chunks are stored at most this late

    @classmethod
    def for_lease(cls, lease: float) -> WorkerTimings:
        """Heartbeats three times a lease; recovery checks twice a lease (at most every 2 s)."""
        return cls(lease=lease, heartbeat=lease / 3, recover=min(2.0, lease / 2))


class RunWorker:
    """Takes pending runs from the store while `gate` has room, and runs each in a task.

    Async runs share the gate (replica_concurrency) with sync calls, and obey the same time
    limit. A slot is taken only for a run that was claimed: a call may take the free slot while
    the worker looks, and then the run waits in line for one (its lease kept alive), alone: the
    worker claims no other run until it has a slot. Only the current attempt of a run may record
    its outcome, so a late result of a cancelled or re-queued run is discarded by the store.
    """

    def __init__(
        self,
        store: JobStore,
        lookup: Lookup,
        gate: AdmissionGate,
        threads: ThreadRunner,
        grace_seconds: float,
        max_attempts: int,
        timings: WorkerTimings = WorkerTimings(),
        clock: Callable[[], float] = time.time,
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.lookup = lookup
        self.gate = gate
        self.threads = threads
        self.grace_seconds = grace_seconds
        self.max_attempts = max_attempts
        self.timings = timings
        self.clock = clock
        self.on_finished = on_finished  # e.g. wake the webhook dispatcher
        self.running: dict[str, asyncio.Task[None]] = {}  # claimed runs, waiting for a slot or not
        self._waiting: set[asyncio.Task[None]] = set()  # those of `running` not yet holding a slot
        self._wakeup = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._loops = [
            asyncio.ensure_future(self._claim_loop()),
            asyncio.ensure_future(self._every(self.timings.recover, self._recover)),
            asyncio.ensure_future(self._every(self.timings.sweep, self._sweep)),
            asyncio.ensure_future(self._follow_cancellations()),
        ]

    def stop_claiming(self) -> None:
        """Take no new run (shutdown has begun: the runs left are another replica's, or this
        one's after a restart); running ones go on, and stop() drains them."""
        if self._loops:
            self._loops[0].cancel()  # the claim loop

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop claiming; let running attempts finish for up to `drain_seconds`, then cancel
        them (they stay claimed until their lease runs out, then run again). A run still waiting
        for a slot has not started: it is cancelled at once, and runs again the same way."""
        for task in [*self._loops, *self._waiting]:
            task.cancel()
        started = [task for task in self.running.values() if task not in self._waiting]
        if started and drain_seconds > 0:
            logger.info("Waiting up to %g s for %d running async run(s)", drain_seconds, len(started))
            await asyncio.wait(started, timeout=drain_seconds)
        tasks = [*self._loops, *self.running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def wake(self) -> None:
        """A run was submitted: look now rather than at the next poll."""
        self._wakeup.set()

    async def cancel(self, run_id: str) -> tuple[Run | None, RunStatus | None]:
        run, before = await self.store.cancel(run_id, self.clock())
        task = self.running.get(run_id)
        if task is not None and before is RunStatus.PROCESSING:
            task.cancel()  # async code sees CancelledError; a sync thread's result is discarded
        if before is not None and not before.is_terminal:
            self.on_finished()
        return run, before

    async def _follow_cancellations(self) -> None:
        """Stop a run cancelled through another replica now, not at its next heartbeat (which
        the store refuses for a cancelled run: the fallback when a message is missed)."""
        while True:
            try:
                async for run_id in self.store.cancelled_runs():
                    task = self.running.get(run_id)
                    if task is not None:
                        task.cancel()  # as in cancel(): the store already holds the cancelled run
            except Exception:
                logger.exception("Could not follow cancellations; retrying")
            await asyncio.sleep(self.timings.poll)

    async def _claim_loop(self) -> None:
        while True:
            # No slot is held while looking: a call arriving meanwhile is never refused for it.
            await self.gate.wait_for_turn()
            self._wakeup.clear()  # a run submitted from now on is looked for again at once
            try:
                run = await self.store.claim(self.clock(), self.timings.lease)
            except Exception:
                logger.exception("Could not claim a run; retrying")
                await asyncio.sleep(self.timings.poll)
                continue
            if run is None:
                await self._wait_for_work()
            else:
                await self._start(run)

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin TimeoutError before 3.11
            await asyncio.wait_for(self._wakeup.wait(), self.timings.poll)

    async def _start(self, run: Run) -> None:
        """Run `run` in a task; return once it holds a slot or has ended."""
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._run_when_admitted(run, admitted))
        self.running[run.run_id] = task
        self._waiting.add(task)
        task.add_done_callback(functools.partial(self._forget, run.run_id))
        await asyncio.wait((admitted, task), return_when=asyncio.FIRST_COMPLETED)

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        # A callback, not a `finally`: a task cancelled before its first step runs none.
        self._waiting.discard(task)
        if self.running.get(run_id) is task:  # not a later attempt of the same run
            del self.running[run_id]

    async def _run_when_admitted(self, run: Run, admitted: asyncio.Future[None]) -> None:
        task = asyncio.current_task()
        assert task is not None
        # Heartbeats first: the lease must outlive a wait in line behind calls.
        heartbeat = asyncio.ensure_future(self._heartbeat(run, task))
        try:
            await self.gate.enter(wait_in_line=True)  # cancelled while waiting, it takes no slot
            self._waiting.discard(task)  # with no await in between: stop() sees it as started
            admitted.set_result(None)
            try:
                outcome = await self._execute(run)
                log_call(run.function, outcome.status.value, outcome.run_time_ms, run.run_id)
                if await self.store.finish(run.run_id, run.attempt, outcome, self.clock()) is not None:
                    self.on_finished()
            finally:
                self.gate.leave()
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, run: Run, attempt: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.timings.heartbeat)
            lease_until = self.clock() + self.timings.lease
            if not await self.store.heartbeat(run.run_id, run.attempt, lease_until):
                attempt.cancel()  # cancelled elsewhere, or re-queued: this attempt is stale
                return

    async def _execute(self, run: Run) -> Outcome:
        current_run_id.set(run.run_id)  # this run's task only: the user's output carries it
        started = time.perf_counter()

        def failed(error_type: str, message: str) -> Outcome:
            return Outcome(RunStatus.FAILED, _ms_since(started), error=RunError(error_type, message))

        spec = self.lookup(run.function)
        if spec is None:
            return failed("NotFound", f"No function '{run.function}' in main.py any more.")
        try:
            kwargs = parse_arguments(spec, run.request.body)
            result = await run_with_deadline(self._invoke(spec, kwargs, run), self.grace_seconds)
            if run.request.shape is not None:  # submitted through an OpenAI route: answer as it would
                shape = ResultShape.model_validate_json(run.request.shape)
                result = apply_shape(shape, result, spec.name, run.run_id, int(self.clock()))
            return Outcome(RunStatus.COMPLETED, _ms_since(started), result_json=encode_json(result))
        except RequestError as exc:
            return failed(type(exc).__name__, exc.message)
        except DeadlineExceeded:
            limit = f"{self.grace_seconds:g} s"
            return failed("Timeout", f"{spec.name}() did not finish within response_grace_period ({limit}).")
        except PydanticSerializationError as exc:
            return failed(
                "ResultNotSerializableError", f"{spec.name}() returned a value that is not JSON: {exc}"
            )
        except Exception as exc:
            logger.exception("%s() raised in run %s", spec.name, run.run_id)
            return failed(type(exc).__name__, str(exc))

    async def _invoke(self, spec: FunctionSpec, kwargs: dict[str, Any], run: Run) -> Any:
        if not spec.kind.is_streaming:
            return await invoke(spec, kwargs, run.run_id, self.threads)
        recorder = _EventRecorder(self.store, run)
        source = open_stream(spec, kwargs, run.run_id)
        chunks: list[Any] = []
        flusher = asyncio.ensure_future(recorder.flush_every(self.timings.event_batch))
        try:
            async with contextlib.aclosing(_iterate(spec, source, self.threads)) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    recorder.add(encode_event(chunk))
        finally:
            flusher.cancel()
        await recorder.flush()
        return chunks

    async def _recover(self) -> None:
        requeued, failed = await self.store.recover(self.clock(), self.max_attempts)
        if requeued or failed:
            logger.warning("Recovered interrupted runs: %d re-queued, %d failed", requeued, failed)
            self.wake()
            if failed:
                self.on_finished()

    async def _sweep(self) -> None:
        swept = await self.store.sweep_expired(self.clock())
        if swept:
            logger.info("Deleted %d runs past their result TTL", swept)

    async def _every(self, seconds: float, action: Callable[[], Any]) -> None:
        while True:
            try:
                await action()
            except Exception:
                logger.exception("Background job failed; it runs again in %g s", seconds)
            await asyncio.sleep(seconds)


class _EventRecorder:
    """Stores a generator run's frames in batches (one store write per batch, not per chunk)."""

    def __init__(self, store: JobStore, run: Run) -> None:
        self.store = store
        self.run = run
        self.pending: list[bytes] = []
        self.recorded = 0

    def add(self, frame: bytes) -> None:
        self.pending.append(frame)

    async def flush(self) -> None:
        frames, self.pending = self.pending, []
        if not frames:
            return
        run = self.run
        if not await self.store.append_events(run.run_id, run.attempt, self.recorded, frames):
            raise asyncio.CancelledError  # the attempt is stale (cancelled, re-queued): stop
        self.recorded += len(frames)

    async def flush_every(self, seconds: float) -> None:
        """So a chunk followed by a long pause is still visible to /events within `seconds`."""
        while True:
            await asyncio.sleep(seconds)
            await self.flush()


async def _iterate(
    spec: FunctionSpec, source: Iterator[Any] | AsyncIterator[Any], threads: ThreadRunner
) -> AsyncGenerator[Any, None]:
    """Chunks of a sync generator (one thread hop each) or an async one, as one async iterator."""
    if spec.kind is FunctionKind.ASYNC_GENERATOR:
        assert isinstance(source, AsyncIterator)
        async for chunk in source:
            yield chunk
        return
    assert isinstance(source, Iterator)
    try:
        while (chunk := await threads.run(next, source, _DONE)) is not _DONE:
            yield chunk
    finally:
        await threads.run(_close, source)


_DONE = object()


def _close(source: Iterator[Any]) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        with contextlib.suppress(ValueError):  # still running in another thread: GC closes it
            close()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
