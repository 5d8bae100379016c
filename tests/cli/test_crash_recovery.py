"""kill -9 the server while it works through accepted runs: none of them is ever lost."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from cortex.jobs.sqlite_store import SQLiteJobStore
from tests.conftest import APPS, TEST_WEBHOOK_SECRET, CortexProcess, WebhookReceiver, wait_for

RUNS = 200
KILLS = 3


def _environment() -> dict[str, str]:
    return {
        "CORTEX_RUN_LEASE_SECONDS": "1",  # a killed worker's runs come back within a second or two
        "CORTEX_MAX_ATTEMPTS": "10",
        "CORTEX_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "CORTEX_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
        "CORTEX_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,1,1,1,1,1,1,1",
    }


async def _submit_all(base: str, hook: str) -> list[str]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{base}/sleep", params={"async": "true", "webhookEndpoint": hook}, json={"seconds": 0.05}
                )
                for _ in range(RUNS)
            )
        )
    assert all(r.status_code == 202 for r in responses)
    return [r.json()["run_id"] for r in responses]


def _statuses(base: str, run_ids: list[str]) -> dict[str, str]:
    with httpx.Client(timeout=30) as client:
        return {run_id: client.get(f"{base}/runs/{run_id}").json()["status"] for run_id in run_ids}


@pytest.mark.timeout(180)  # a delivery in flight at a kill waits out its lease (~25 s) first
def test_kill_9_mid_way_loses_no_accepted_run(tmp_path: Path, webhook_receiver: WebhookReceiver):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    env = _environment()

    def start() -> tuple[CortexProcess, str]:
        server = CortexProcess(["serve", str(APPS / "jobs"), "--port", "0", "--store", store], env)
        return server, server.wait_ready() + "/v4/p-local/jobs"

    server, base = start()
    run_ids = asyncio.run(_submit_all(base, webhook_receiver.url))
    unfinished_at_kill = []
    for _ in range(KILLS):
        time.sleep(0.8)  # let it get some way through, then pull the plug
        unfinished_at_kill.append(sum(s != "completed" for s in _statuses(base, run_ids).values()))
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        server, base = start()
    try:
        wait_for(
            lambda: set(_statuses(base, run_ids).values()) == {"completed"},
            timeout=120,
            what="every run to complete",
        )
        delivered = {hook.json()["run_id"] for hook in webhook_receiver.received}
        missing = set(run_ids) - delivered
        wait_for(
            lambda: not (set(run_ids) - {h.json()["run_id"] for h in webhook_receiver.received}),
            timeout=60,
            what=f"webhooks for {len(missing)} runs",
        )
    finally:
        server.stop(signal.SIGTERM)
    assert len(set(run_ids)) == RUNS
    assert unfinished_at_kill[0] > 0, "the first kill came after all the work was done"


def test_sigterm_lets_a_running_async_run_finish_first(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    env = _environment()
    server = CortexProcess(["serve", str(APPS / "jobs"), "--port", "0", "--store", store], env)
    base = server.wait_ready() + "/v4/p-local/jobs"
    run_id = httpx.post(f"{base}/asleep?async=true", json={"seconds": 1}).json()["run_id"]
    wait_for(lambda: _statuses(base, [run_id])[run_id] == "processing", 10, "the run to start")
    assert server.stop(signal.SIGTERM, timeout=20) == -signal.SIGTERM
    assert "Waiting up to 5 s for 1 running async run(s)" in server.output
    server = CortexProcess(["serve", str(APPS / "jobs"), "--port", "0", "--store", store], env)
    base = server.wait_ready() + "/v4/p-local/jobs"
    try:
        run = httpx.get(f"{base}/runs/{run_id}").json()
    finally:
        server.stop(signal.SIGTERM)
    assert run["status"] == "completed"
    assert run["result"] == 1


def test_sigterm_stops_claiming_while_the_calls_in_flight_drain(tmp_path: Path):
    app = tmp_path / "jobs"
    shutil.copytree(APPS / "jobs", app)
    toml = app / "cerebrium.toml"
    toml.write_text(toml.read_text().replace("replica_concurrency = 2", "replica_concurrency = 1"))
    store_path = tmp_path / "runs.db"
    server = CortexProcess(
        ["serve", str(app), "--port", "0", "--store", f"sqlite:///{store_path}"], _environment()
    )
    base = server.wait_ready() + "/v4/p-local/jobs"
    call: list[httpx.Response] = []
    holder = threading.Thread(
        target=lambda: call.append(httpx.post(f"{base}/sleep", json={"seconds": 2}, timeout=30))
    )
    holder.start()  # holds the only slot: the runs below wait for it
    time.sleep(0.3)
    run_ids = [
        httpx.post(f"{base}/asleep?async=true", json={"seconds": 0.2}).json()["run_id"] for _ in range(3)
    ]
    assert server.stop(signal.SIGTERM, timeout=20) == -signal.SIGTERM
    holder.join()
    assert call[0].status_code == 200  # the call in flight finished

    async def statuses() -> list[str]:
        store = SQLiteJobStore(store_path, "p-local/jobs")
        await store.open()
        try:
            return [(await store.get(run_id)).status.value for run_id in run_ids]  # type: ignore[union-attr]
        finally:
            await store.close()

    # The slot came free during the drain, but no run was taken then: they wait for a server
    # that is not stopping (another replica, or this one restarted).
    assert asyncio.run(statuses()) == ["pending"] * 3
