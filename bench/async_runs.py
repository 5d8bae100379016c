"""Async runs (`?async=true`) on one cortex server: end-to-end and submit load, and the disk probe.

- End to end: bench/async_load.py (pinned to the load CPU) submits `--async-runs` runs with
  `--async-concurrency` in flight and waits until every one has completed: runs/s and the
  created -> completed latency of each run.
- Submit: wrk POSTs to `...?async=true` (the same post_json.lua: the query string is part of the
  URL) for the usual warm-up + duration. Every 202 means one run committed to the store. The
  worker keeps running the backlog meanwhile; the store's status counts before and after the
  measured window (read straight from its SQLite file) give how far it fell behind.
- The disk probe times a bare fsync and a bare SQLite commit (WAL, synchronous=FULL) in the
  directory the stores live in: the ceiling every submit, claim and finish pays.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from servers import BENCH_DIR, LOAD_CPU, Server, pinned
from wrk_load import run_wrk

PROBE_COMMITS = 300


def async_url(url: str) -> str:
    return f"{url}?async=true"


def run_e2e(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """bench/async_load.py's result for `url` (a function's URL, without the query string)."""
    command = [
        sys.executable,
        str(BENCH_DIR / "async_load.py"),
        f"--url={url}",
        f"--runs={args.async_runs}",
        f"--concurrency={args.async_concurrency}",
        f"--timeout={args.async_timeout}",
    ]
    timeout = args.async_timeout + 120
    done = subprocess.run(pinned(command, LOAD_CPU), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"async_load.py exited with code {done.returncode}: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def e2e_problem(result: dict[str, Any], args: argparse.Namespace) -> str:
    """Why an end-to-end result is a failure ("" when it is not; plain errors are only counted)."""
    if result["timed_out"]:
        return f"{result['unfinished']} run(s) had not ended {args.async_timeout:g} s after the last submit"
    if not result["completed"]:
        return "no run completed"
    return ""


def run_submit(server: Server, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """wrk on `url?async=true`: 202s/s, and how the backlog grew over the measured window."""
    run_wrk(async_url(url), args.warmup, args.connections)
    before = store_counts(server.store_path)
    started = time.perf_counter()
    result = run_wrk(async_url(url), args.duration, args.connections).to_dict()
    elapsed = time.perf_counter() - started
    after = store_counts(server.store_path)
    completed = after.get("completed", 0) - before.get("completed", 0)
    return {
        **result,
        "store_before": before,
        "store_after": after,
        "backlog_before": _backlog(before),
        "backlog_after": _backlog(after),
        "completed_meanwhile_per_s": completed / elapsed if before and after else None,
    }


def _backlog(counts: dict[str, int]) -> int:
    return counts.get("pending", 0) + counts.get("processing", 0)


def store_counts(path: Path | None) -> dict[str, int]:
    """Runs per status in the store file, read-only ({} when it cannot be read)."""
    if path is None or not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
    except sqlite3.Error:
        return {}
    return {str(status): int(count) for status, count in rows}


def probe_disk(directory: Path | None = None, count: int = PROBE_COMMITS) -> dict[str, Any]:
    """Mean ms of one fsync'd 4 KiB append and of one SQLite commit (WAL, synchronous=FULL)."""
    with tempfile.TemporaryDirectory(prefix="bench-probe-", dir=directory) as scratch:
        base = Path(scratch)
        return {
            "directory": str(base.parent),
            "filesystem": _filesystem(base),
            "fsync_ms": _time_fsync(base / "fsync.bin", count) * 1000,
            "sqlite_full_commit_ms": _time_sqlite_commits(base / "probe.db", count) * 1000,
        }


def _time_fsync(path: Path, count: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        return (time.perf_counter() - started) / count
    finally:
        os.close(fd)


def _time_sqlite_commits(path: Path, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (body BLOB)")
        started = time.perf_counter()
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (b"{}" * 100,))
            conn.execute("COMMIT")
        return (time.perf_counter() - started) / count
    finally:
        conn.close()


def _filesystem(path: Path) -> str:
    """The filesystem type `stat -f` reports (e.g. ext2/ext3 for ext4, tmpfs), or "unknown"."""
    done = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"
