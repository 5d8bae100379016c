"""What only the SQLite store promises: its file, its pragmas, and sharing it between stores."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.errors import StoreError
from cortex.jobs.models import RunStatus
from cortex.jobs.sqlite_store import (
    DELIVERIES,
    EVENTS,
    RUNS,
    SCHEMA_VERSION,
    SQLiteJobStore,
    open_connection,
)
from tests.unit.test_store_contract import HOOK, LEASE, NOW, completed, request_for, sync


def opened(path: Path) -> SQLiteJobStore:
    store = SQLiteJobStore(path)
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
    conn = open_connection(tmp_path / "runs.db")
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
    store = SQLiteJobStore(Path(sys.argv[1]))
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
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(path)], stdout=subprocess.PIPE, text=True)
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
        sync(SQLiteJobStore(path).open())
    assert str(caught.value) == (
        f"Cannot open the job store {path}: cannot create the directory {tmp_path / 'taken'} (File exists). "
        "Check that the path is a writable file (or can be created), or point CORTEX_STORE at another file."
    )


def test_a_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(tmp_path).open())
    assert str(caught.value).startswith(
        f"Cannot open the job store {tmp_path}: unable to open database file."
    )


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"these are not the runs you are looking for" * 100)
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(path).open())
    assert str(caught.value).startswith(f"Cannot open the job store {path}: file is not a database.")


def test_a_store_written_by_a_newer_cortex_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError) as caught:
        sync(SQLiteJobStore(path).open())
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
        old = sync(store.get("old"))
        assert old is not None and old.request.shape is None and old.status is RunStatus.PENDING
        sync(store.submit(request_for(f"new-{opening}", shape=shape), 10))
        new = sync(store.get(f"new-{opening}"))
        assert new is not None and new.request.shape == shape
        sync(store.close())
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    raw.close()
