"""The SQLite job store's transactions: one blocking function per JobStore operation.

They run on the store's own thread (see sqlite_store.SQLiteJobStore); none touches the loop.
Each takes the store's namespace after the connection and touches only that namespace's runs
and deliveries (the sweep excepted): a run of another app is as unknown as one never submitted.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cortex.errors import IdempotencyConflictError, OverloadedError, StoreError
from cortex.jobs import paging
from cortex.jobs.models import (
    Delivery,
    Outcome,
    Run,
    RunError,
    RunRequest,
    RunStatus,
    WebhookStatus,
    delivery_status,
    webhook_payload,
)
from cortex.jobs.sqlite_schema import CANCELLED_ERROR, DELIVERIES, EVENTS, RUNS, SELECT_RUN

T = TypeVar("T")


def guarded(path: Path, work: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    try:
        return work(conn, *args)
    except sqlite3.Error as exc:
        raise StoreError(f"Job store {path}: {exc}.") from exc


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


def load(conn: sqlite3.Connection, namespace: str, run_id: str) -> Run | None:
    row = conn.execute(f"{SELECT_RUN} WHERE r.run_id = ? AND r.namespace = ?", (run_id, namespace)).fetchone()
    return None if row is None else _run_from_row(row)


def _insert(
    conn: sqlite3.Connection, namespace: str, request: RunRequest, attempt: int, started_at: float | None
) -> None:
    conn.execute(
        f"INSERT INTO {RUNS} (run_id, namespace, function, body, created_at, ttl_seconds, streaming,"
        " webhook_url, webhook_secret, idempotency_key, body_hash, shape, status, attempt, started_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            request.run_id,
            namespace,
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


def _terminate(
    conn: sqlite3.Connection, namespace: str, request: RunRequest, outcome: Outcome, now: float
) -> None:
    """End a run of `namespace` with `outcome` and queue its webhook (atomic: the caller's
    transaction)."""
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
            f"INSERT INTO {DELIVERIES} (delivery_id, run_id, namespace, url, payload, cerebrium_secret,"
            " next_attempt_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"msg_{uuid.uuid4().hex}",
                request.run_id,
                namespace,
                request.webhook_url,
                webhook_payload(request, outcome),
                request.webhook_secret,
                now,
                WebhookStatus.PENDING.value,
            ),
        )


def submit(
    conn: sqlite3.Connection, namespace: str, request: RunRequest, max_pending: int
) -> tuple[Run, bool]:
    key = request.idempotency_key
    if key is not None:  # keys are per app: another app's run with this key is no conflict
        row = conn.execute(
            f"{SELECT_RUN} WHERE r.namespace = ? AND r.idempotency_key = ?", (namespace, key)
        ).fetchone()
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
    # The cap is this app's queue: another app's backlog on the same file never refuses a run.
    pending = conn.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {RUNS} WHERE namespace = ? AND status = ? LIMIT ?)",
        (namespace, RunStatus.PENDING.value, max_pending),
    ).fetchone()[0]
    if pending >= max_pending:
        raise OverloadedError(
            f"Too many queued runs: {pending} pending (CORTEX_MAX_QUEUE={max_pending}). Retry after a moment."
        )
    _insert(conn, namespace, request, attempt=0, started_at=None)
    run = load(conn, namespace, request.run_id)
    assert run is not None
    return run, True


def claim(conn: sqlite3.Connection, namespace: str, now: float, lease_seconds: float) -> Run | None:
    row = conn.execute(
        f"SELECT run_id FROM {RUNS} WHERE namespace = ? AND status = ? ORDER BY created_at, position LIMIT 1",
        (namespace, RunStatus.PENDING.value),
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
    return load(conn, namespace, run_id)


def _is_current(conn: sqlite3.Connection, namespace: str, run_id: str, attempt: int) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM {RUNS} WHERE run_id = ? AND namespace = ? AND status = ? AND attempt = ?",
        (run_id, namespace, RunStatus.PROCESSING.value, attempt),
    ).fetchone()
    return row is not None


def heartbeat(
    conn: sqlite3.Connection, namespace: str, run_id: str, attempt: int, lease_until: float
) -> bool:
    cursor = conn.execute(
        f"UPDATE {RUNS} SET lease_until = ?"
        " WHERE run_id = ? AND namespace = ? AND status = ? AND attempt = ?",
        (lease_until, run_id, namespace, RunStatus.PROCESSING.value, attempt),
    )
    return cursor.rowcount == 1


def finish(
    conn: sqlite3.Connection, namespace: str, run_id: str, attempt: int, outcome: Outcome, now: float
) -> Run | None:
    run = load(conn, namespace, run_id)
    if run is None or not _is_current(conn, namespace, run_id, attempt):
        return None  # cancelled, re-queued or recovered meanwhile: this result is discarded
    _terminate(conn, namespace, run.request, outcome, now)
    return load(conn, namespace, run_id)


def record_finished(
    conn: sqlite3.Connection, namespace: str, request: RunRequest, outcome: Outcome, now: float
) -> Run:
    # It ran once, just now: its start is inferred from its own run time.
    _insert(conn, namespace, request, attempt=1, started_at=now - outcome.run_time_ms / 1000)
    _terminate(conn, namespace, request, outcome, now)
    run = load(conn, namespace, request.run_id)
    assert run is not None
    return run


def cancel(
    conn: sqlite3.Connection, namespace: str, run_id: str, now: float
) -> tuple[Run | None, RunStatus | None]:
    run = load(conn, namespace, run_id)
    if run is None:
        return None, None
    if run.status.is_terminal:
        return run, run.status
    started = run.started_at if run.status is RunStatus.PROCESSING else None
    elapsed_ms = 0.0 if started is None else max(0.0, (now - started) * 1000)
    cancelled = Outcome(RunStatus.CANCELLED, elapsed_ms, error=CANCELLED_ERROR)
    _terminate(conn, namespace, run.request, cancelled, now)
    return load(conn, namespace, run_id), run.status


def recover(conn: sqlite3.Connection, namespace: str, now: float, max_attempts: int) -> tuple[int, int]:
    # Only this app's runs: another app's functions may not exist here, and its own servers
    # re-queue them (running here would also mix up which app's limits and secrets apply).
    rows = conn.execute(
        f"{SELECT_RUN} WHERE r.namespace = ? AND r.status = ? AND r.lease_until < ?",
        (namespace, RunStatus.PROCESSING.value, now),
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
            _terminate(conn, namespace, run.request, Outcome(RunStatus.FAILED, 0.0, error=error), now)
            failed += 1
        else:
            conn.execute(
                f"UPDATE {RUNS} SET status = ?, started_at = NULL, lease_until = NULL WHERE run_id = ?",
                (RunStatus.PENDING.value, run.run_id),
            )
            requeued += 1
    return requeued, failed


def append_events(
    conn: sqlite3.Connection, namespace: str, run_id: str, attempt: int, first_seq: int, chunks: list[bytes]
) -> bool:
    if not _is_current(conn, namespace, run_id, attempt):
        return False
    conn.executemany(
        f"INSERT INTO {EVENTS} (run_id, seq, data) VALUES (?, ?, ?)",
        [(run_id, first_seq + offset, chunk) for offset, chunk in enumerate(chunks)],
    )
    return True


def events_after(
    conn: sqlite3.Connection, namespace: str, run_id: str, after_seq: int, limit: int
) -> list[tuple[int, bytes]]:
    # One SELECT, so it is consistent without a transaction; the EXISTS is evaluated once.
    rows = conn.execute(
        f"SELECT seq, data FROM {EVENTS} WHERE run_id = ? AND seq > ?"
        f" AND EXISTS (SELECT 1 FROM {RUNS} WHERE run_id = ? AND namespace = ?) ORDER BY seq LIMIT ?",
        (run_id, after_seq, run_id, namespace, limit),
    ).fetchall()
    return [(row["seq"], row["data"]) for row in rows]


def _encode_cursor(run: sqlite3.Row) -> str:
    return paging.encode_cursor(run["created_at"], run["position"])


def list_runs(
    conn: sqlite3.Connection,
    namespace: str,
    status: RunStatus | None,
    function: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Run], str | None]:
    where: list[str] = ["r.namespace = ?"]
    params: list[Any] = [namespace]
    if status is not None:
        where.append("r.status = ?")
        params.append(status.value)
    if function is not None:
        where.append("r.function = ?")
        params.append(function)
    if cursor is not None:
        where.append("(r.created_at, r.position) < (?, ?)")
        params.extend(paging.decode_cursor(cursor))
    rows = conn.execute(
        f"{SELECT_RUN} WHERE {' AND '.join(where)} ORDER BY r.created_at DESC, r.position DESC LIMIT ?",
        (*params, limit + 1),  # one more than asked says whether a next page exists
    ).fetchall()
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit and page else None
    return [_run_from_row(row) for row in page], next_cursor


def count_runs(conn: sqlite3.Connection, namespace: str) -> dict[RunStatus, int]:
    rows = conn.execute(
        f"SELECT status, COUNT(*) FROM {RUNS} WHERE namespace = ? GROUP BY status", (namespace,)
    )
    return {RunStatus(status): count for status, count in rows}


def claim_deliveries(
    conn: sqlite3.Connection, namespace: str, now: float, limit: int, lease_seconds: float
) -> list[Delivery]:
    # Only this app's: each app signs its webhooks with its own secret.
    rows = conn.execute(
        f"SELECT * FROM {DELIVERIES} WHERE namespace = ? AND status = ? AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at, position LIMIT ?",
        (namespace, WebhookStatus.PENDING.value, now, limit),
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


def record_delivery(
    conn: sqlite3.Connection,
    namespace: str,
    delivery_id: str,
    attempts: int,
    delivered: bool,
    next_attempt_at: float | None,
    error: str | None,
) -> None:
    status = delivery_status(delivered, next_attempt_at)
    conn.execute(
        f"UPDATE {DELIVERIES} SET attempts = ?, status = ?, last_error = ?,"
        " next_attempt_at = COALESCE(?, next_attempt_at) WHERE delivery_id = ? AND namespace = ?",
        (attempts, status.value, error, next_attempt_at, delivery_id, namespace),
    )


def _delete_runs(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int:
    selected = f"SELECT run_id FROM {RUNS} WHERE {where}"
    conn.execute(f"DELETE FROM {EVENTS} WHERE run_id IN ({selected})", params)
    conn.execute(f"DELETE FROM {DELIVERIES} WHERE run_id IN ({selected})", params)
    return conn.execute(f"DELETE FROM {RUNS} WHERE {where}", params).rowcount


def sweep_expired(conn: sqlite3.Connection, namespace: str, now: float) -> int:
    """Across namespaces, on purpose: expiry is the run's own TTL, chosen when it was submitted,
    and an expired run already answers 404 to its own app, so deleting it changes what no app
    sees; scoped, the runs of an app no longer served on this file would stay on disk forever.
    `namespace` is unused: it is there because every transaction is called with it."""
    # Only terminal runs have an expires_at, so a pending or processing run is never swept.
    return _delete_runs(conn, "expires_at <= ?", (now,))
