"""`cortex serve --workers N`: N processes on one port; a dead one is replaced; SIGTERM stops all."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from cortex.config import CustomRuntimeConfig
from cortex.errors import ServeError
from cortex.workers import check_workers
from tests.conftest import APPS, CortexProcess, run_cortex, wait_for
from tests.replicas import APP, REPLICA_ENV, is_running

RELOAD_MESSAGE = (
    "Error: --workers 2 cannot be combined with --reload: the reloader restarts a single process. "
    "Drop --reload to serve several workers, or serve one worker while developing."
)


def _pids(url: str, calls: int = 20) -> set[int]:
    """The worker pids that answer `calls` calls, each on a new connection. A worker still
    importing main.py answers 503 (the banner comes with the first ready worker): not counted."""
    replies = [httpx.post(f"{url}/v4/p-local/replicas/pid", json={}) for _ in range(calls)]
    assert all(reply.status_code in (200, 503) for reply in replies), [r.text for r in replies]
    return {reply.json()["result"] for reply in replies if reply.status_code == 200}


def _two_pids(url: str, without: int | None = None) -> set[int]:
    """Call until two workers have answered (none of them `without`); their pids."""

    def seen() -> set[int] | None:
        pids = _pids(url)
        return pids if len(pids) == 2 and without not in pids else None

    pids: set[int] = wait_for(seen, 20, "two workers to answer")
    return pids


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (workers, multiprocessing's resource tracker)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def _serve_workers(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> CortexProcess:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    return CortexProcess(
        ["serve", str(APP), "--port", "0", "--store", store, *args], {**REPLICA_ENV, **(env or {})}
    )


@pytest.mark.timeout(60)
def test_two_workers_serve_a_killed_one_is_replaced_and_sigterm_stops_them_all(tmp_path: Path):
    server = _serve_workers(tmp_path, "--workers", "2")
    try:
        url = server.wait_ready()
        pids = _two_pids(url)
        assert pids <= _children(server.proc.pid)
        assert server.output.count("Ready.") == 1  # the banner once, not once per worker
        assert "Workers: 2 processes" in server.output

        killed = min(pids)
        server_pid = server.proc.pid
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: not is_running(killed), 10, "the killed worker to go")
        replaced = _two_pids(url, without=killed) - pids
        assert len(replaced) == 1
        assert f"Child process [{killed}] died" in server.output

        # SIGTERM to the supervisor alone (not its group): it stops its workers itself.
        descendants = _children(server_pid)
        run_id = httpx.post(f"{url}/v4/p-local/replicas/nap?async=true", json={"seconds": 1.0}).json()[
            "run_id"
        ]
        wait_for(
            lambda: httpx.get(f"{url}/v4/p-local/replicas/runs/{run_id}").json()["status"] == "processing",
            10,
            "the run to start",
        )
        os.kill(server_pid, signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        wait_for(lambda: not any(is_running(pid) for pid in descendants), 10, "every worker to exit")
    finally:
        server.stop(signal.SIGKILL)
    assert "Waiting up to 20 s for 1 running async run(s)" in server.output  # drained, not dropped
    restarted = _serve_workers(tmp_path)
    try:
        base = restarted.wait_ready() + "/v4/p-local/replicas"
        assert httpx.get(f"{base}/runs/{run_id}").json()["status"] == "completed"
    finally:
        restarted.stop()


def test_workers_with_reload_is_refused():
    result = run_cortex("serve", str(APP), "--port", "0", "--workers", "2", "--reload")
    assert result.returncode == 1
    assert result.stderr.strip() == RELOAD_MESSAGE


def test_cortex_workers_variable_is_read_and_checked():
    result = run_cortex("serve", str(APP), "--port", "0", "--reload", env={"CORTEX_WORKERS": "3"})
    assert result.returncode == 1
    assert result.stderr.strip() == RELOAD_MESSAGE.replace("--workers 2", "CORTEX_WORKERS=3")
    result = run_cortex("serve", str(APP), "--port", "0", env={"CORTEX_WORKERS": "0"})
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "Error: CORTEX_WORKERS: expected a positive integer, got '0'",
    )


def test_zero_workers_is_a_usage_error():
    result = run_cortex("serve", str(APP), "--port", "0", "--workers", "0")
    assert result.returncode == 2
    assert "Invalid value for '--workers': 0 is not in the range x>=1." in result.stderr


def test_a_custom_runtime_with_workers_is_refused():
    result = run_cortex("serve", str(APPS / "custom_asgi"), "--port", "0", "--workers", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: --workers 2: this app has a custom runtime ([cerebrium.runtime.custom] in cerebrium.toml), "
        "and each worker would start its server on port 8192. Serve it with one worker; for more, "
        "run more replicas (containers or hosts) sharing one CORTEX_STORE."
    )


def test_one_worker_is_always_allowed():
    custom = CustomRuntimeConfig(entrypoint=("python", "main.py"))
    check_workers(1, True, True, custom)  # --workers 1 --reload, custom runtime: a single server
    with pytest.raises(ServeError, match=r"^--workers 4: this app has a custom runtime"):
        check_workers(4, True, False, custom)


def test_a_main_py_that_fails_to_import_stops_every_worker_and_says_so_once(tmp_path: Path):
    failing = CortexProcess(
        [
            "serve",
            str(APPS / "import_error"),
            "--port",
            "0",
            "--workers",
            "2",
            "--store",
            f"sqlite:///{tmp_path / 'r.db'}",
        ]
    )
    try:
        assert failing.wait(timeout=30) == 1
    finally:
        failing.stop(signal.SIGKILL)
    assert failing.output.count("Error: main.py failed to import: No module named 'not_a_real_module'.") == 1
    assert "Ready." not in failing.output
