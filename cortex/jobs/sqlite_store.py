"""The default JobStore: runs, stream events and the webhook outbox in one SQLite file."""

from __future__ import annotations

import asyncio
import base64
import functools
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cortex.errors import BadRequestError, IdempotencyConflictError, OverloadedError, StoreError
from cortex.jobs.models import (
    Delivery,
    Outcome,
    Run,
    RunError,
    RunRequest,
    RunStatus,
    WebhookStatus,
    webhook_payload,
)

T = TypeVar("T")

RUNS = "runs"
EVENTS = "run_events"
DELIVERIES = "deliveries"
SCHEMA_VERSION = 2  # 2: runs.shape
BUSY_TIMEOUT_MS = 5000  # other processes on the same file hold the write lock for milliseconds

CANCELLED_ERROR = RunError("Cancelled", "Run cancelled by request.")

# `position` is insertion order: the tie-break when two runs share a created_at (and a stable
# cursor key, unlike rowid, which VACUUM may renumber). AUTOINCREMENT never reuses a swept one.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {RUNS} (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    streaming INTEGER NOT NULL,
    webhook_url TEXT,
    webhook_secret TEXT,
    idempotency_key TEXT,
    body_hash TEXT,
    shape TEXT,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    completed_at REAL,
    expires_at REAL,
    lease_until REAL,
    run_time_ms REAL,
    result_json BLOB,
    error_type TEXT,
    error_message TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS {RUNS}_idempotency_key ON {RUNS} (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS {RUNS}_queue ON {RUNS} (status, created_at, position);
CREATE INDEX IF NOT EXISTS {RUNS}_newest ON {RUNS} (created_at, position);
CREATE INDEX IF NOT EXISTS {RUNS}_expires_at ON {RUNS} (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {EVENTS} (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {DELIVERIES} (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    payload BLOB NOT NULL,
    cerebrium_secret TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS {DELIVERIES}_due ON {DELIVERIES} (status, next_attempt_at, position);
"""
# A run ends once, so it has at most one delivery (UNIQUE run_id) and this join never repeats a run.
SELECT_RUN = f"""
SELECT r.*, d.status AS webhook_status, d.attempts AS webhook_attempts
FROM {RUNS} r LEFT JOIN {DELIVERIES} d ON d.run_id = r.run_id
"""


def open_connection(path: Path) -> sqlite3.Connection:
    """Open (creating it and its directories) and configure the store file; StoreError if it can't."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unopenable(path, f"cannot create the directory {path.parent} ({exc.strerror})") from exc
    try:
        # Transactions are explicit (BEGIN IMMEDIATE) rather than sqlite3's implicit ones.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _unopenable(path, str(exc)) from exc
    try:
        _configure(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise _unopenable(path, str(exc)) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
    conn.execute("PRAGMA synchronous = FULL")  # an accepted run survives a power cut
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The job store {path} was written by a newer Cortex (schema {version}; this one "
            f"reads {SCHEMA_VERSION}). Upgrade Cortex, or point CORTEX_STORE at another file."
        )
    conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
    _in_transaction(_migrate, conn)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file written by an older Cortex up to SCHEMA_VERSION (idempotent, so two processes
    opening it at once are fine: the second finds the work done inside its own transaction)."""
    columns = {row["name"] for row in conn.execute(f"PRAGMA table_info({RUNS})")}
    if "shape" not in columns:  # schema 1
        conn.execute(f"ALTER TABLE {RUNS} ADD COLUMN shape TEXT")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _unopenable(path: Path, reason: str) -> StoreError:
    return StoreError(
        f"Cannot open the job store {path}: {reason}. Check that the path is a writable file (or can "
        "be created), or point CORTEX_STORE at another file."
    )


class SQLiteJobStore:
    """JobStore on one SQLite file, safe to share between processes.

    Every call runs on one dedicated thread that owns the connection, so the event loop never
    blocks and this object's SQL is serialised; each mutating call is one BEGIN IMMEDIATE
    transaction, which is what makes two processes on the same file claim a run only once.
    A run's webhook status is that of its delivery: None until the run ends with a webhook.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cortex-sqlite")
        try:
            loop = asyncio.get_running_loop()
            self._conn = await loop.run_in_executor(self._executor, open_connection, self.path)
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
        return await self._write(_submit, request, max_pending)

    async def get(self, run_id: str) -> Run | None:
        return await self._read(_load, run_id)

    async def list_runs(
        self, status: RunStatus | None, function: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        return await self._read(_list_runs, status, function, limit, cursor)

    async def claim(self, now: float, lease_seconds: float) -> Run | None:
        return await self._write(_claim, now, lease_seconds)

    async def heartbeat(self, run_id: str, attempt: int, lease_until: float) -> bool:
        return await self._write(_heartbeat, run_id, attempt, lease_until)

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, now: float) -> Run | None:
        return await self._write(_finish, run_id, attempt, outcome, now)

    async def record_finished(self, request: RunRequest, outcome: Outcome, now: float) -> Run:
        return await self._write(_record_finished, request, outcome, now)

    async def cancel(self, run_id: str, now: float) -> tuple[Run | None, RunStatus | None]:
        return await self._write(_cancel, run_id, now)

    async def recover(self, now: float, max_attempts: int) -> tuple[int, int]:
        return await self._write(_recover, now, max_attempts)

    async def append_events(self, run_id: str, attempt: int, first_seq: int, chunks: list[bytes]) -> bool:
        return await self._write(_append_events, run_id, attempt, first_seq, chunks)

    async def events_after(self, run_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        return await self._read(_events_after, run_id, after_seq, limit)

    async def claim_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]:
        return await self._write(_claim_deliveries, now, limit, lease_seconds)

    async def record_delivery(
        self,
        delivery_id: str,
        attempts: int,
        delivered: bool,
        next_attempt_at: float | None,
        error: str | None,
    ) -> None:
        await self._write(_record_delivery, delivery_id, attempts, delivered, next_attempt_at, error)

    async def sweep_expired(self, now: float) -> int:
        return await self._write(_sweep_expired, now)

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        # Each query is a single SELECT, consistent on its own without a transaction.
        return await self._call(query, *args)

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        return await self._call(functools.partial(_in_transaction, work), *args)

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        # The connection is taken now, so a call made before close() still completes after it.
        conn, executor = self._conn, self._executor
        assert conn is not None and executor is not None, "SQLiteJobStore used while closed: open() it first"
        call = functools.partial(_guarded, self.path, work, conn, *args)
        return await asyncio.get_running_loop().run_in_executor(executor, call)


def _guarded(path: Path, work: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    try:
        return work(conn, *args)
    except sqlite3.Error as exc:
        raise StoreError(f"Job store {path}: {exc}.") from exc


def _in_transaction(work: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
    try:
        result = work(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _run_from_row(row: sqlite3.Row) -> Run:
    request = RunRequest(
        run_id=row["run_id"],
        function=row["function"],
        body=row["body"],
        created_at=row["created_at"],
        ttl_seconds=row["ttl_seconds"],
        streaming=bool(row["streaming"]),
        webhook_url=row["webhook_url"],
        webhook_secret=row["webhook_secret"],
        idempotency_key=row["idempotency_key"],
        body_hash=row["body_hash"],
        shape=row["shape"],
    )
    error = None if row["error_type"] is None else RunError(row["error_type"], row["error_message"])
    webhook = row["webhook_status"]
    return Run(
        request=request,
        status=RunStatus(row["status"]),
        attempt=row["attempt"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        lease_until=row["lease_until"],
        run_time_ms=row["run_time_ms"],
        result_json=row["result_json"],
        error=error,
        webhook_status=None if webhook is None else WebhookStatus(webhook),
        webhook_attempts=row["webhook_attempts"] or 0,
    )


def _load(conn: sqlite3.Connection, run_id: str) -> Run | None:
    row = conn.execute(f"{SELECT_RUN} WHERE r.run_id = ?", (run_id,)).fetchone()
    return None if row is None else _run_from_row(row)


def _insert(conn: sqlite3.Connection, request: RunRequest, attempt: int, started_at: float | None) -> None:
    conn.execute(
        f"INSERT INTO {RUNS} (run_id, function, body, created_at, ttl_seconds, streaming, webhook_url,"
        " webhook_secret, idempotency_key, body_hash, shape, status, attempt, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            request.run_id,
            request.function,
            request.body,
            request.created_at,
            request.ttl_seconds,
            int(request.streaming),
            request.webhook_url,
            request.webhook_secret,
            request.idempotency_key,
            request.body_hash,
            request.shape,
            RunStatus.PENDING.value,
            attempt,
            started_at,
        ),
    )


def _terminate(conn: sqlite3.Connection, request: RunRequest, outcome: Outcome, now: float) -> None:
    """End a run with `outcome` and queue its webhook: the caller's transaction makes it atomic."""
    error = outcome.error
    conn.execute(
        f"UPDATE {RUNS} SET status = ?, completed_at = ?, expires_at = ?, lease_until = NULL,"
        " run_time_ms = ?, result_json = ?, error_type = ?, error_message = ? WHERE run_id = ?",
        (
            outcome.status.value,
            now,
            now + request.ttl_seconds,
            outcome.run_time_ms,
            outcome.result_json,
            None if error is None else error.type,
            None if error is None else error.message,
            request.run_id,
        ),
    )
    if request.webhook_url is not None:
        conn.execute(
            f"INSERT INTO {DELIVERIES} (delivery_id, run_id, url, payload, cerebrium_secret,"
            " next_attempt_at, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                f"msg_{uuid.uuid4().hex}",
                request.run_id,
                request.webhook_url,
                webhook_payload(request, outcome),
                request.webhook_secret,
                now,
                WebhookStatus.PENDING.value,
            ),
        )


def _submit(conn: sqlite3.Connection, request: RunRequest, max_pending: int) -> tuple[Run, bool]:
    key = request.idempotency_key
    if key is not None:
        row = conn.execute(f"{SELECT_RUN} WHERE r.idempotency_key = ?", (key,)).fetchone()
        existing = None if row is None else _run_from_row(row)
        if existing is not None and existing.is_expired(request.created_at):
            # Past its TTL the run answers 404, so the key is free again (swept here, not later).
            _delete_runs(conn, "run_id = ?", (existing.run_id,))
        elif existing is not None and existing.request.body_hash == request.body_hash:
            return existing, False
        elif existing is not None:
            raise IdempotencyConflictError(
                f"Idempotency-Key '{key}' was already used with a different body (run "
                f"{existing.run_id}). Use a new key for a new request."
            )
    # Count no further than the cap: the check costs O(CORTEX_MAX_QUEUE), not O(queue length).
    pending = conn.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {RUNS} WHERE status = ? LIMIT ?)",
        (RunStatus.PENDING.value, max_pending),
    ).fetchone()[0]
    if pending >= max_pending:
        raise OverloadedError(
            f"Too many queued runs: {pending} pending (CORTEX_MAX_QUEUE={max_pending}). Retry after a moment."
        )
    _insert(conn, request, attempt=0, started_at=None)
    run = _load(conn, request.run_id)
    assert run is not None
    return run, True


def _claim(conn: sqlite3.Connection, now: float, lease_seconds: float) -> Run | None:
    row = conn.execute(
        f"SELECT run_id FROM {RUNS} WHERE status = ? ORDER BY created_at, position LIMIT 1",
        (RunStatus.PENDING.value,),
    ).fetchone()
    if row is None:
        return None
    run_id = row["run_id"]
    conn.execute(
        f"UPDATE {RUNS} SET status = ?, attempt = attempt + 1, started_at = ?, lease_until = ?"
        " WHERE run_id = ? AND status = ?",
        (RunStatus.PROCESSING.value, now, now + lease_seconds, run_id, RunStatus.PENDING.value),
    )
    conn.execute(f"DELETE FROM {EVENTS} WHERE run_id = ?", (run_id,))  # a new attempt restarts the stream
    return _load(conn, run_id)


def _is_current(conn: sqlite3.Connection, run_id: str, attempt: int) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM {RUNS} WHERE run_id = ? AND status = ? AND attempt = ?",
        (run_id, RunStatus.PROCESSING.value, attempt),
    ).fetchone()
    return row is not None


def _heartbeat(conn: sqlite3.Connection, run_id: str, attempt: int, lease_until: float) -> bool:
    cursor = conn.execute(
        f"UPDATE {RUNS} SET lease_until = ? WHERE run_id = ? AND status = ? AND attempt = ?",
        (lease_until, run_id, RunStatus.PROCESSING.value, attempt),
    )
    return cursor.rowcount == 1


def _finish(conn: sqlite3.Connection, run_id: str, attempt: int, outcome: Outcome, now: float) -> Run | None:
    run = _load(conn, run_id)
    if run is None or not _is_current(conn, run_id, attempt):
        return None  # cancelled, re-queued or recovered meanwhile: this result is discarded
    _terminate(conn, run.request, outcome, now)
    return _load(conn, run_id)


def _record_finished(conn: sqlite3.Connection, request: RunRequest, outcome: Outcome, now: float) -> Run:
    # It ran once, just now: its start is inferred from its own run time.
    _insert(conn, request, attempt=1, started_at=now - outcome.run_time_ms / 1000)
    _terminate(conn, request, outcome, now)
    run = _load(conn, request.run_id)
    assert run is not None
    return run


def _cancel(conn: sqlite3.Connection, run_id: str, now: float) -> tuple[Run | None, RunStatus | None]:
    run = _load(conn, run_id)
    if run is None:
        return None, None
    if run.status.is_terminal:
        return run, run.status
    started = run.started_at if run.status is RunStatus.PROCESSING else None
    elapsed_ms = 0.0 if started is None else max(0.0, (now - started) * 1000)
    _terminate(conn, run.request, Outcome(RunStatus.CANCELLED, elapsed_ms, error=CANCELLED_ERROR), now)
    return _load(conn, run_id), run.status


def _recover(conn: sqlite3.Connection, now: float, max_attempts: int) -> tuple[int, int]:
    rows = conn.execute(
        f"{SELECT_RUN} WHERE r.status = ? AND r.lease_until < ?", (RunStatus.PROCESSING.value, now)
    ).fetchall()
    requeued = failed = 0
    for run in map(_run_from_row, rows):
        if run.attempt >= max_attempts:
            error = RunError(
                "Interrupted",
                f"The server stopped {run.attempt} times while running this run "
                f"(CORTEX_MAX_ATTEMPTS={max_attempts}).",
            )
            # The attempt's own run time died with the process that measured it.
            _terminate(conn, run.request, Outcome(RunStatus.FAILED, 0.0, error=error), now)
            failed += 1
        else:
            conn.execute(
                f"UPDATE {RUNS} SET status = ?, started_at = NULL, lease_until = NULL WHERE run_id = ?",
                (RunStatus.PENDING.value, run.run_id),
            )
            requeued += 1
    return requeued, failed


def _append_events(
    conn: sqlite3.Connection, run_id: str, attempt: int, first_seq: int, chunks: list[bytes]
) -> bool:
    if not _is_current(conn, run_id, attempt):
        return False
    conn.executemany(
        f"INSERT INTO {EVENTS} (run_id, seq, data) VALUES (?, ?, ?)",
        [(run_id, first_seq + offset, chunk) for offset, chunk in enumerate(chunks)],
    )
    return True


def _events_after(
    conn: sqlite3.Connection, run_id: str, after_seq: int, limit: int
) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        f"SELECT seq, data FROM {EVENTS} WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (run_id, after_seq, limit),
    ).fetchall()
    return [(row["seq"], row["data"]) for row in rows]


def _encode_cursor(run: sqlite3.Row) -> str:
    raw = f"{run['created_at']!r}:{run['position']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, position = raw.split(":")
        return float(created_at), int(position)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise BadRequestError(
            f"Invalid cursor {cursor!r}: pass the next_cursor of a previous page, or omit it."
        ) from exc


def _list_runs(
    conn: sqlite3.Connection, status: RunStatus | None, function: str | None, limit: int, cursor: str | None
) -> tuple[list[Run], str | None]:
    where: list[str] = ["1"]
    params: list[Any] = []
    if status is not None:
        where.append("r.status = ?")
        params.append(status.value)
    if function is not None:
        where.append("r.function = ?")
        params.append(function)
    if cursor is not None:
        where.append("(r.created_at, r.position) < (?, ?)")
        params.extend(_decode_cursor(cursor))
    rows = conn.execute(
        f"{SELECT_RUN} WHERE {' AND '.join(where)} ORDER BY r.created_at DESC, r.position DESC LIMIT ?",
        (*params, limit + 1),  # one more than asked says whether a next page exists
    ).fetchall()
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit and page else None
    return [_run_from_row(row) for row in page], next_cursor


def _claim_deliveries(
    conn: sqlite3.Connection, now: float, limit: int, lease_seconds: float
) -> list[Delivery]:
    rows = conn.execute(
        f"SELECT * FROM {DELIVERIES} WHERE status = ? AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at, position LIMIT ?",
        (WebhookStatus.PENDING.value, now, limit),
    ).fetchall()
    leased_until = now + lease_seconds  # another dispatcher sees them as not due until then
    conn.executemany(
        f"UPDATE {DELIVERIES} SET next_attempt_at = ? WHERE delivery_id = ?",
        [(leased_until, row["delivery_id"]) for row in rows],
    )
    return [
        Delivery(
            delivery_id=row["delivery_id"],
            run_id=row["run_id"],
            url=row["url"],
            payload=row["payload"],
            attempts=row["attempts"],
            next_attempt_at=leased_until,
            cerebrium_secret=row["cerebrium_secret"],
        )
        for row in rows
    ]


def _record_delivery(
    conn: sqlite3.Connection,
    delivery_id: str,
    attempts: int,
    delivered: bool,
    next_attempt_at: float | None,
    error: str | None,
) -> None:
    if delivered:
        status = WebhookStatus.DELIVERED
    elif next_attempt_at is not None:
        status = WebhookStatus.PENDING
    else:
        status = WebhookStatus.FAILED
    conn.execute(
        f"UPDATE {DELIVERIES} SET attempts = ?, status = ?, last_error = ?,"
        " next_attempt_at = COALESCE(?, next_attempt_at) WHERE delivery_id = ?",
        (attempts, status.value, error, next_attempt_at, delivery_id),
    )


def _delete_runs(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int:
    selected = f"SELECT run_id FROM {RUNS} WHERE {where}"
    conn.execute(f"DELETE FROM {EVENTS} WHERE run_id IN ({selected})", params)
    conn.execute(f"DELETE FROM {DELIVERIES} WHERE run_id IN ({selected})", params)
    return conn.execute(f"DELETE FROM {RUNS} WHERE {where}", params).rowcount


def _sweep_expired(conn: sqlite3.Connection, now: float) -> int:
    # Only terminal runs have an expires_at, so a pending or processing run is never swept.
    return _delete_runs(conn, "expires_at <= ?", (now,))
