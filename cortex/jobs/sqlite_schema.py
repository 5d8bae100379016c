"""The SQLite job store's schema and connection: tables, pragmas, migrations."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cortex.errors import StoreError
from cortex.jobs.models import RunError

T = TypeVar("T")

RUNS = "runs"
EVENTS = "run_events"
DELIVERIES = "deliveries"
SCHEMA_VERSION = 3  # 2: runs.shape; 3: runs.namespace and deliveries.namespace
BUSY_TIMEOUT_MS = 5000  # other processes on the same file hold the write lock for milliseconds

CANCELLED_ERROR = RunError("Cancelled", "Run cancelled by request.")

# `namespace` is "{project_id}/{app_name}": the app a run belongs to. Several servers (projects,
# apps) may share one file, and each sees only its own runs (see store.JobStore). `run_id` stays
# unique across namespaces (a uuid4), so events and deliveries are keyed by it alone.
# `position` is insertion order: the tie-break when two runs share a created_at (and a stable
# cursor key, unlike rowid, which VACUUM may renumber). AUTOINCREMENT never reuses a swept one.
TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {RUNS} (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
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
)""",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID""",
    # A delivery's namespace is its run's, copied so that a dispatcher's claim is one index range.
    f"""CREATE TABLE IF NOT EXISTS {DELIVERIES} (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    url TEXT NOT NULL,
    payload BLOB NOT NULL,
    cerebrium_secret TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT
)""",
)
# Every hot query is one range of one of these, namespace first: claim and the pending count
# (queue), list (newest, or queue with a status), an idempotent submit, the dispatcher's claim.
# The sweep is the one query across namespaces (see sqlite_transactions.sweep_expired).
INDEXES = (
    f"""CREATE UNIQUE INDEX IF NOT EXISTS {RUNS}_namespace_idempotency_key
    ON {RUNS} (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL""",
    f"CREATE INDEX IF NOT EXISTS {RUNS}_namespace_queue ON {RUNS} (namespace, status, created_at, position)",
    f"CREATE INDEX IF NOT EXISTS {RUNS}_namespace_newest ON {RUNS} (namespace, created_at, position)",
    f"CREATE INDEX IF NOT EXISTS {RUNS}_expires_at ON {RUNS} (expires_at) WHERE expires_at IS NOT NULL",
    f"""CREATE INDEX IF NOT EXISTS {DELIVERIES}_namespace_due
    ON {DELIVERIES} (namespace, status, next_attempt_at, position)""",
)
# Schema 2's indexes that lacked the namespace; dropped by the migration to schema 3.
SCHEMA_2_INDEXES = (
    f"{RUNS}_idempotency_key",
    f"{RUNS}_queue",
    f"{RUNS}_newest",
    f"{DELIVERIES}_due",
)
# A run ends once, so it has at most one delivery (UNIQUE run_id) and this join never repeats a run.
SELECT_RUN = f"""
SELECT r.*, d.status AS webhook_status, d.attempts AS webhook_attempts
FROM {RUNS} r LEFT JOIN {DELIVERIES} d ON d.run_id = r.run_id
"""


def open_connection(path: Path, namespace: str) -> sqlite3.Connection:
    """Open (creating it and its directories) and configure the store file; StoreError if it can't.

    `namespace` is the opener's: a file written before runs had one is given it (see _migrate).
    """
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
        _configure(conn, path, namespace)
    except sqlite3.Error as exc:
        conn.close()
        raise _unopenable(path, str(exc)) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, namespace: str) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _use_wal(conn)  # readers never wait for the writer
    conn.execute("PRAGMA synchronous = FULL")  # an accepted run survives a power cut
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The job store {path} was written by a newer Cortex (schema {version}; this one "
            f"reads {SCHEMA_VERSION}). Upgrade Cortex, or point CORTEX_STORE at another file."
        )
    in_transaction(_create_or_migrate, conn, namespace)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL, retrying for up to the busy timeout: two connections switching a
    new file at once deadlock, and SQLite then fails one at once rather than call its busy
    handler. Once switched, the mode is recorded in the file and this is a no-op."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _create_or_migrate(conn: sqlite3.Connection, namespace: str) -> None:
    """Tables, then what older files lack, then indexes (which need the new columns): one
    transaction, so two processes opening the file at once never see it half-migrated."""
    for statement in TABLES:
        conn.execute(statement)
    _migrate(conn, namespace)
    for statement in INDEXES:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate(conn: sqlite3.Connection, namespace: str) -> None:
    """Bring a file written by an older Cortex up to SCHEMA_VERSION (idempotent, so two processes
    opening it at once are fine: the second finds the work done inside its own transaction)."""
    columns = _columns(conn, RUNS)
    if "shape" not in columns:  # schema 1
        conn.execute(f"ALTER TABLE {RUNS} ADD COLUMN shape TEXT")
    # Schema 2 had no namespaces: a file was used by one app, so its runs (and their deliveries)
    # were written by the app that opens it first now, and become that app's. The column's
    # DEFAULT says so too, for a row an older Cortex still running on the file writes later.
    # (DDL takes no parameters; a namespace is URL-safe text, quoted anyway.)
    owner = "'" + namespace.replace("'", "''") + "'"
    for table in (RUNS, DELIVERIES):
        if "namespace" not in _columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN namespace TEXT NOT NULL DEFAULT {owner}")
    for index in SCHEMA_2_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}


def _unopenable(path: Path, reason: str) -> StoreError:
    return StoreError(
        f"Cannot open the job store {path}: {reason}. Check that the path is a writable file (or can "
        "be created), or point CORTEX_STORE at another file."
    )


def in_transaction(work: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
    try:
        result = work(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
