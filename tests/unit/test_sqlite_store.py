"""What only the SQLite store promises: its file, its pragmas, and sharing it between stores."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cortex.errors import StoreError
from cortex.jobs import sqlite_transactions as tx
from cortex.jobs.models import RunStatus, WebhookStatus
from cortex.jobs.sqlite_store import (
    DELIVERIES,
    EVENTS,
    RUNS,
    SCHEMA_VERSION,
    SQLiteJobStore,
    in_transaction,
    open_connection,
)
from tests.unit.test_store_contract import (
    HOOK,
    LEASE,
    NAMESPACE,
    NOW,
    OTHER_NAMESPACE,
    completed,
    request_for,
    sync,
)


def opened(path: Path, namespace: str = NAMESPACE) -> SQLiteJobStore:
    store = SQLiteJobStore(path, namespace)
    sync(store.open())
    return store


def test_open_creates_the_file_and_its_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "state" / ".cortex" / "runs.db"
    store = opened(path)
    sync(store.close())
    assert path.is_file()
    raw = sqlite3.connect(path)
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    raw.close()
    assert {RUNS, EVENTS, DELIVERIES} <= tables


def test_connection_uses_wal_full_sync_and_waits_for_other_writers(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "runs.db", NAMESPACE)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        conn.close()


def test_the_file_stays_in_wal_mode_for_other_processes(tmp_path: Path) -> None:
    sync(opened(tmp_path / "runs.db").close())
    raw = sqlite3.connect(tmp_path / "runs.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # recorded in the file itself
    raw.close()


def test_json_and_bytes_are_stored_as_given(tmp_path: Path) -> None:
    store = opened(tmp_path / "runs.db")
    request = request_for("r1", body=b'{"prompt": "hi"}', webhook_url=HOOK)
    sync(store.record_finished(request, completed(1.0, b'{"text":"hi"}'), NOW))
    sync(store.close())
    raw = sqlite3.connect(tmp_path / "runs.db")
    body, result = raw.execute(f"SELECT body, result_json FROM {RUNS}").fetchone()
    [payload] = raw.execute(f"SELECT payload FROM {DELIVERIES}").fetchone()
    raw.close()
    assert (body, result) == (b'{"prompt": "hi"}', b'{"text":"hi"}')
    assert json.loads(payload)["result"] == {"text": "hi"}


def test_every_committed_run_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = opened(path)
    sync(store.submit(request_for("waiting", 101.0, idempotency_key="k", body_hash="h"), 10))
    sync(store.submit(request_for("done", 100.0, webhook_url=HOOK, streaming=True), 10))
    sync(store.claim(NOW, LEASE))
    sync(store.append_events("done", 1, 1, [b"a", b"b"]))
    sync(store.finish("done", 1, completed(), NOW + 1))
    [delivery] = sync(store.claim_deliveries(NOW + 1, 10, LEASE))
    sync(store.record_delivery(delivery.delivery_id, 1, False, NOW + 5, "HTTP 503"))
    sync(store.submit(request_for("cancelled", 102.0), 10))
    sync(store.cancel("cancelled", NOW + 2))
    before = sync(store.list_runs(None, None, 10, None))
    sync(store.close())

    reopened = opened(path)
    assert sync(reopened.list_runs(None, None, 10, None)) == before
    assert [run.run_id for run in before[0]] == ["cancelled", "waiting", "done"]
    assert sync(reopened.events_after("done", 0, 10)) == [(1, b"a"), (2, b"b")]
    [again] = sync(reopened.claim_deliveries(NOW + 5, 10, LEASE))
    assert (again.delivery_id, again.attempts, again.payload) == (delivery.delivery_id, 1, delivery.payload)
    _, created = sync(reopened.submit(request_for("retry", idempotency_key="k", body_hash="h"), 10))
    assert not created
    sync(reopened.close())


def test_a_second_store_on_the_file_sees_each_commit_at_once(tmp_path: Path) -> None:
    first, second = opened(tmp_path / "runs.db"), opened(tmp_path / "runs.db")
    sync(first.submit(request_for("r1"), 10))
    claimed = sync(second.claim(NOW, LEASE))
    assert claimed is not None and sync(first.get("r1")) == claimed
    run, before = sync(first.cancel("r1", NOW + 1))
    assert before is RunStatus.PROCESSING
    assert sync(second.finish("r1", 1, completed(), NOW + 2)) is None  # the cancel won
    assert sync(second.get("r1")) == run
    sync(first.close())
    sync(second.close())


def test_two_stores_on_one_file_claim_each_run_once(tmp_path: Path) -> None:
    stores = [opened(tmp_path / "runs.db") for _ in range(2)]
    run_ids = [f"r{i:02}" for i in range(40)]
    for run_id in run_ids:
        sync(stores[0].submit(request_for(run_id, webhook_url=HOOK), 100))

    async def drain(store: SQLiteJobStore) -> list[str]:
        claimed: list[str] = []
        while (run := await store.claim(NOW, LEASE)) is not None:
            claimed.append(run.run_id)
            await store.finish(run.run_id, run.attempt, completed(), NOW)
        return claimed

    async def both() -> list[list[str]]:  # each store works from its own thread, truly at once
        return list(await asyncio.gather(*(drain(store) for store in stores)))

    claims = sync(both())
    assert sorted(claims[0] + claims[1]) == run_ids

    async def dispatch(store: SQLiteJobStore) -> list[str]:
        return [d.delivery_id for d in await store.claim_deliveries(NOW, 7, LEASE)]

    async def dispatch_both() -> list[str]:
        batches = await asyncio.gather(*(dispatch(store) for _ in range(4) for store in stores))
        return [delivery_id for batch in batches for delivery_id in batch]

    delivered = sync(dispatch_both())
    assert len(delivered) == len(set(delivered)) == len(run_ids)
    for store in stores:
        sync(store.close())


CLAIMER = """
import asyncio, sys
from pathlib import Path
from cortex.jobs.sqlite_store import SQLiteJobStore

async def main() -> None:
    store = SQLiteJobStore(Path(sys.argv[1]), sys.argv[2])
    await store.open()
    while (run := await store.claim(1000.0, 30.0)) is not None:
        print(run.run_id, flush=True)
    await store.close()

asyncio.run(main())
"""


def test_two_processes_on_one_file_claim_each_run_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = opened(path)
    run_ids = [f"r{i:03}" for i in range(200)]
    for run_id in run_ids:
        sync(store.submit(request_for(run_id), 1000))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), NAMESPACE], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=30)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert sorted(outputs[0].split() + outputs[1].split()) == run_ids
    assert sync(store.claim(NOW, LEASE)) is None
    sync(store.close())


def test_a_write_waits_for_another_writer_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = opened(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

    async def scenario() -> None:
        submitting = asyncio.create_task(store.submit(request_for("r1"), 10))
        for _ in range(5):
            await asyncio.sleep(0.02)  # the loop keeps running while the store waits
        assert not submitting.done()
        other.execute("COMMIT")
        run, created = await submitting
        assert created and run.status is RunStatus.PENDING

    sync(scenario())
    other.close()
    sync(store.close())


def test_a_path_under_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a directory")
    path = tmp_path / "taken" / "runs.db"
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(path, "p-test/app").open())
    assert str(caught.value) == (
        f"Cannot open the job store {path}: cannot create the directory {tmp_path / 'taken'} (File exists). "
        "Check that the path is a writable file (or can be created), or point CORTEX_STORE at another file."
    )


def test_a_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(tmp_path, "p-test/app").open())
    assert str(caught.value).startswith(
        f"Cannot open the job store {tmp_path}: unable to open database file."
    )


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"these are not the runs you are looking for" * 100)
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(path, "p-test/app").open())
    assert str(caught.value).startswith(f"Cannot open the job store {path}: file is not a database.")


def test_a_store_written_by_a_newer_cortex_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(path, "p-test/app").open())
    assert str(caught.value) == (
        f"The job store {path} was written by a newer Cortex (schema 99; this one reads {SCHEMA_VERSION}). "
        "Upgrade Cortex, or point CORTEX_STORE at another file."
    )


# Schema 1, as Cortex wrote it before runs had a `shape`: opening it adds the column, keeps the runs.
SCHEMA_1_RUNS = f"""
CREATE TABLE {RUNS} (
    position INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE, function TEXT NOT NULL,
    body BLOB NOT NULL, created_at REAL NOT NULL, ttl_seconds INTEGER NOT NULL, streaming INTEGER NOT NULL,
    webhook_url TEXT, webhook_secret TEXT, idempotency_key TEXT, body_hash TEXT, status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, started_at REAL, completed_at REAL, expires_at REAL,
    lease_until REAL, run_time_ms REAL, result_json BLOB, error_type TEXT, error_message TEXT
);
INSERT INTO {RUNS} (run_id, function, body, created_at, ttl_seconds, streaming, status)
    VALUES ('old', 'predict', X'7B7D', 100.0, 3600, 0, 'pending');
PRAGMA user_version = 1;
"""


def test_a_schema_1_store_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    raw = sqlite3.connect(path)
    raw.executescript(SCHEMA_1_RUNS)
    raw.close()
    shape = '{"kind":"chat","model":"m"}'
    for opening in ("first", "second"):  # the second open finds the work done
        store = opened(path)
        old = sync(store.get("old"))  # the opener's now, like schema 2's runs
        assert old is not None and old.request.shape is None and old.status is RunStatus.PENDING
        sync(store.submit(request_for(f"new-{opening}", shape=shape), 10))
        new = sync(store.get(f"new-{opening}"))
        assert new is not None and new.request.shape == shape
        sync(store.close())
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    raw.close()


# Schema 2 exactly as Cortex wrote it before runs had a namespace (SCHEMA in sqlite_schema.py at
# 1f45118), with what one app left in it: a queued run holding an idempotency key, and a finished
# generator run with its events and a webhook still to deliver. The file is left in rollback-
# journal mode (Cortex's own were WAL), so opening it at once also races to switch it to WAL.
SCHEMA_2 = f"""
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
INSERT INTO {RUNS} (run_id, function, body, created_at, ttl_seconds, streaming, idempotency_key,
    body_hash, status) VALUES ('waiting', 'predict', X'7B7D', 101.0, 3600, 0, 'k', 'h', 'pending');
INSERT INTO {RUNS} (run_id, function, body, created_at, ttl_seconds, streaming, webhook_url, status,
    attempt, started_at, completed_at, expires_at, run_time_ms, result_json)
    VALUES ('done', 'tokens', X'7B7D', 100.0, 3600, 1, '{HOOK}', 'completed', 1, 990.0, 1000.0,
    4600.0, 5.0, X'5B5D');
INSERT INTO {EVENTS} (run_id, seq, data) VALUES ('done', 0, X'61'), ('done', 1, X'62');
INSERT INTO {DELIVERIES} (delivery_id, run_id, url, payload, next_attempt_at, status)
    VALUES ('msg_old', 'done', '{HOOK}', X'7B7D', 1000.0, 'pending');
PRAGMA user_version = 2;
"""


def schema_2_file(path: Path) -> Path:
    raw = sqlite3.connect(path)
    raw.executescript(SCHEMA_2)
    raw.close()
    return path


def sees_schema_2_runs(store: SQLiteJobStore) -> bool:
    runs, _ = sync(store.list_runs(None, None, 10, None))
    return [run.run_id for run in runs] == ["waiting", "done"]


def test_a_schema_2_store_keeps_its_runs_in_the_namespace_of_its_first_opener(tmp_path: Path) -> None:
    path = schema_2_file(tmp_path / "runs.db")
    first = opened(path, NAMESPACE)
    assert sees_schema_2_runs(first)
    done = sync(first.get("done"))
    assert done is not None and done.status is RunStatus.COMPLETED and done.result_json == b"[]"
    assert done.webhook_status is WebhookStatus.PENDING
    assert sync(first.events_after("done", -1, 10)) == [(0, b"a"), (1, b"b")]
    again, created = sync(first.submit(request_for("retry", idempotency_key="k", body_hash="h"), 10))
    assert (again.run_id, created) == ("waiting", False)
    [delivery] = sync(first.claim_deliveries(NOW, 10, LEASE))
    assert (delivery.delivery_id, delivery.run_id) == ("msg_old", "done")

    other = opened(path, OTHER_NAMESPACE)  # opened second: the runs are not its own
    assert sync(other.list_runs(None, None, 10, None)) == ([], None)
    assert sync(other.get("waiting")) is None
    assert sync(other.events_after("done", -1, 10)) == []
    assert sync(other.claim(NOW, LEASE)) is None
    assert sync(other.claim_deliveries(NOW + LEASE, 10, LEASE)) == []
    theirs, created = sync(other.submit(request_for("theirs", idempotency_key="k", body_hash="h2"), 10))
    assert created and theirs.run_id == "theirs"  # the key is free in another namespace
    claimed = sync(first.claim(NOW, LEASE))
    assert claimed is not None and claimed.run_id == "waiting"
    for store in (first, other):
        sync(store.close())

    reopened = opened(path, NAMESPACE)  # migrating again changes nothing
    assert [run.run_id for run in sync(reopened.list_runs(None, None, 10, None))[0]] == ["waiting", "done"]
    sync(reopened.close())
    raw = sqlite3.connect(path)
    indexes = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    version = raw.execute("PRAGMA user_version").fetchone()[0]
    raw.close()
    assert version == SCHEMA_VERSION == 3
    assert {
        f"{RUNS}_idempotency_key",
        f"{RUNS}_queue",
        f"{RUNS}_newest",
        f"{DELIVERIES}_due",
    } & indexes == set()
    assert {
        f"{RUNS}_namespace_idempotency_key",
        f"{RUNS}_namespace_queue",
        f"{RUNS}_namespace_newest",
        f"{RUNS}_expires_at",
        f"{DELIVERIES}_namespace_due",
    } <= indexes


def test_two_apps_opening_a_schema_2_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = schema_2_file(tmp_path / "runs.db")
    stores = [SQLiteJobStore(path, NAMESPACE), SQLiteJobStore(path, OTHER_NAMESPACE)]

    async def open_both() -> None:  # each store opens from its own thread, truly at once
        await asyncio.gather(*(store.open() for store in stores))

    sync(open_both())
    # Whichever took the write lock first owns the old runs; the other found the work done.
    assert sorted(sees_schema_2_runs(store) for store in stores) == [False, True]
    for store in stores:
        sync(store.close())


def test_two_stores_creating_one_file_at_once_both_open(tmp_path: Path) -> None:
    async def open_and_close(path: Path) -> None:
        stores = [SQLiteJobStore(path, NAMESPACE), SQLiteJobStore(path, OTHER_NAMESPACE)]
        await asyncio.gather(*(store.open() for store in stores))  # from two threads, at once
        await asyncio.gather(*(store.close() for store in stores))

    for attempt in range(20):  # the race is lost one time in ten or so: try it often enough
        sync(open_and_close(tmp_path / f"runs-{attempt}.db"))


def test_sweep_deletes_expired_runs_of_every_namespace(tmp_path: Path) -> None:
    mine, theirs = opened(tmp_path / "runs.db", NAMESPACE), opened(tmp_path / "runs.db", OTHER_NAMESPACE)
    sync(theirs.record_finished(request_for("theirs", ttl_seconds=10, webhook_url=HOOK), completed(), NOW))
    sync(mine.record_finished(request_for("mine", ttl_seconds=100), completed(), NOW))
    assert sync(mine.sweep_expired(NOW + 10)) == 1  # an expired run is gone for its own app anyway
    assert sync(theirs.get("theirs")) is None
    assert sync(theirs.claim_deliveries(NOW + 10, 10, LEASE)) == []
    assert sync(mine.get("mine")) is not None
    for store in (mine, theirs):
        sync(store.close())


def _traced(conn: sqlite3.Connection, work: Callable[[], Any]) -> list[str]:
    """The statements `work` runs on `conn`, with their values inlined (sqlite3's expanded SQL)."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        work()
    finally:
        conn.set_trace_callback(None)
    return [sql for sql in statements if sql.split()[0] not in ("BEGIN", "COMMIT", "ROLLBACK")]


# A hot query reads one index range: of its own namespace, one run or delivery by its id, or (the
# sweep) the expired runs. A table read row by row, a sort, or an index range that other
# namespaces' rows share would slow it down as the file, or another app's queue, grows.
_INDEX_RANGE = re.compile(r"^SEARCH \w+ USING .*\((namespace|run_id|delivery_id|expires_at)[=<>]")


_TABLE_READ = re.compile(r"^(SCAN|SEARCH) \w+")  # not "SCAN (subquery-1)", a subquery's own rows


def _is_slow(step: str) -> bool:
    return "TEMP B-TREE" in step or (bool(_TABLE_READ.match(step)) and not _INDEX_RANGE.match(step))


@pytest.mark.parametrize("origin", ["new", "schema 2"])
def test_hot_queries_are_index_ranges(tmp_path: Path, origin: str) -> None:
    path = tmp_path / "runs.db"
    if origin == "schema 2":
        schema_2_file(path)
    conn = open_connection(path, NAMESPACE)

    def write(work: Callable[..., Any], *args: Any) -> Any:
        return in_transaction(work, conn, NAMESPACE, *args)

    for i in range(3):
        write(tx.submit, request_for(f"r{i}", 200.0 + i, webhook_url=HOOK, streaming=True), 100)
    write(tx.record_finished, request_for("hooked", webhook_url=HOOK), completed(), NOW)
    _, cursor = tx.list_runs(conn, NAMESPACE, None, None, 1, None)
    hot: dict[str, Callable[[], Any]] = {
        "submit": lambda: write(tx.submit, request_for("k", idempotency_key="k", body_hash="h"), 100),
        "claim": lambda: write(tx.claim, NOW, LEASE),
        "get": lambda: tx.load(conn, NAMESPACE, "r1"),
        "heartbeat": lambda: write(tx.heartbeat, "r0", 1, NOW + LEASE),
        "append_events": lambda: write(tx.append_events, "r0", 1, 0, [b"a"]),
        "events_after": lambda: tx.events_after(conn, NAMESPACE, "r0", -1, 10),
        "finish": lambda: write(tx.finish, "r0", 1, completed(), NOW + 1),
        "cancel": lambda: write(tx.cancel, "r2", NOW + 1),
        "list": lambda: tx.list_runs(conn, NAMESPACE, None, None, 10, cursor),
        "list by status": lambda: tx.list_runs(conn, NAMESPACE, RunStatus.PENDING, None, 10, cursor),
        "list by function": lambda: tx.list_runs(conn, NAMESPACE, None, "predict", 10, cursor),
        "recover": lambda: write(tx.recover, NOW + 10 * LEASE, 3),
        "claim_deliveries": lambda: write(tx.claim_deliveries, NOW + 5, 10, LEASE),
        "sweep_expired": lambda: write(tx.sweep_expired, NOW + 10_000),
    }
    slow: dict[str, list[str]] = {}
    first_steps: dict[str, str] = {}  # how each operation's first statement reads its table
    for name, work in hot.items():
        for sql in _traced(conn, work):
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            if plan:
                first_steps.setdefault(name, plan[0])
            if any(_is_slow(step) for step in plan):
                slow[f"{name}: {sql}"] = plan
    conn.close()
    assert slow == {}
    # The hottest ones take exactly their own rows: no skipping another status or namespace.
    assert {name: first_steps[name] for name in EXACT_PLANS} == EXACT_PLANS


EXACT_PLANS = {
    "claim": f"SEARCH {RUNS} USING INDEX {RUNS}_namespace_queue (namespace=? AND status=?)",
    "get": f"SEARCH r USING INDEX sqlite_autoindex_{RUNS}_1 (run_id=?)",
    "list": f"SEARCH r USING INDEX {RUNS}_namespace_newest (namespace=? AND created_at<?)",
    "list by status": (
        f"SEARCH r USING INDEX {RUNS}_namespace_queue (namespace=? AND status=? AND created_at<?)"
    ),
    "claim_deliveries": (
        f"SEARCH {DELIVERIES} USING INDEX {DELIVERIES}_namespace_due"
        " (namespace=? AND status=? AND next_attempt_at<?)"
    ),
}
