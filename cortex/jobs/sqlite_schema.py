"""The SQLite job store's schema and connection: tables, pragmas, migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cortex.errors import StoreError
from cortex.jobs.models import RunError

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
    in_transaction(_migrate, conn)


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
