"""The default JobStore: runs, stream events and the webhook outbox in one SQLite file."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cortex.jobs import sqlite_transactions as tx
from cortex.jobs.models import (
    Delivery,
    Outcome,
    Run,
    RunRequest,
    RunStatus,
)
from cortex.jobs.sqlite_schema import (  # noqa: F401 - re-exported for callers and tests
    BUSY_TIMEOUT_MS,
    CANCELLED_ERROR,
    DELIVERIES,
    EVENTS,
    RUNS,
    SCHEMA_VERSION,
    SELECT_RUN,
    in_transaction,
    open_connection,
)

T = TypeVar("T")


class SQLiteJobStore:
    """JobStore on one SQLite file, safe to share between processes.

    Every call runs on one dedicated thread that owns the connection, so the event loop never
    blocks and this object's SQL is serialised; each mutating call is one BEGIN IMMEDIATE
    transaction, which is what makes two processes on the same file claim a run only once.
    A run's webhook status is that of its delivery: None until the run ends with a webhook.

    `namespace` ("{project_id}/{app_name}") is the app this store serves: every call sees and
    changes only that app's runs, so several apps may share one file (see JobStore).
    """

    def __init__(self, path: Path, namespace: str) -> None:
        assert namespace, "a store serves one app: pass its namespace"
        self.path = path
        self.namespace = namespace
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cortex-sqlite")
        try:
            loop = asyncio.get_running_loop()
            self._conn = await loop.run_in_executor(
                self._executor, open_connection, self.path, self.namespace
            )
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            return
        self._conn = self._executor = None  # later calls fail at once instead of queueing
        await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)  # its thread is idle now and exits by itself

    async def submit(self, request: RunRequest, max_pending: int) -> tuple[Run, bool]:
        return await self._write(tx.submit, request, max_pending)

    async def get(self, run_id: str) -> Run | None:
        return await self._read(tx.load, run_id)

    async def list_runs(
        self, status: RunStatus | None, function: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        return await self._read(tx.list_runs, status, function, limit, cursor)

    async def count_runs(self) -> dict[RunStatus, int]:
        return await self._read(tx.count_runs)

    async def claim(self, now: float, lease_seconds: float) -> Run | None:
        return await self._write(tx.claim, now, lease_seconds)

    async def heartbeat(self, run_id: str, attempt: int, lease_until: float) -> bool:
        return await self._write(tx.heartbeat, run_id, attempt, lease_until)

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, now: float) -> Run | None:
        return await self._write(tx.finish, run_id, attempt, outcome, now)

    async def record_finished(self, request: RunRequest, outcome: Outcome, now: float) -> Run:
        return await self._write(tx.record_finished, request, outcome, now)

    async def cancel(self, run_id: str, now: float) -> tuple[Run | None, RunStatus | None]:
        return await self._write(tx.cancel, run_id, now)

    async def recover(self, now: float, max_attempts: int) -> tuple[int, int]:
        return await self._write(tx.recover, now, max_attempts)

    async def append_events(self, run_id: str, attempt: int, first_seq: int, chunks: list[bytes]) -> bool:
        return await self._write(tx.append_events, run_id, attempt, first_seq, chunks)

    async def events_after(self, run_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        return await self._read(tx.events_after, run_id, after_seq, limit)

    async def claim_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]:
        return await self._write(tx.claim_deliveries, now, limit, lease_seconds)

    async def record_delivery(
        self,
        delivery_id: str,
        attempts: int,
        delivered: bool,
        next_attempt_at: float | None,
        error: str | None,
    ) -> None:
        await self._write(tx.record_delivery, delivery_id, attempts, delivered, next_attempt_at, error)

    async def sweep_expired(self, now: float) -> int:
        return await self._write(tx.sweep_expired, now)

    async def cancelled_runs(self) -> AsyncIterator[str]:
        """Never yields: processes sharing the file have no channel between them. A worker
        learns of another process's cancel when its heartbeat is refused (the run is no longer
        processing), within one heartbeat interval; its own cancels it sees directly."""
        await asyncio.Event().wait()
        yield ""  # unreachable: makes this an async generator

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        # Each query is a single SELECT, consistent on its own without a transaction.
        return await self._call(query, *args)

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        return await self._call(functools.partial(in_transaction, work), *args)

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        # The connection is taken now, so a call made before close() still completes after it.
        conn, executor = self._conn, self._executor
        assert conn is not None and executor is not None, "SQLiteJobStore used while closed: open() it first"
        call = functools.partial(tx.guarded, self.path, work, conn, self.namespace, *args)
        return await asyncio.get_running_loop().run_in_executor(executor, call)
