"""What only the Redis store does, against real redis-servers: durability checks, connection
errors, several replicas on one namespace, cancel broadcasts, Redis expiry, kill -9 survival.

The shared behaviour (what SQLite does too) is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cortex.concurrency import AdmissionGate, ThreadRunner
from cortex.discovery import build_spec
from cortex.errors import StoreError
from cortex.jobs.models import Outcome, RunRequest, RunStatus
from cortex.jobs.redis_store import RedisJobStore
from cortex.jobs.store import store_from_url
from cortex.jobs.worker import RunWorker, WorkerTimings
from tests.redis_server import RedisServer

NAMESPACE = "p-one/app"
LEASE = 30.0


def request_for(run_id: str, ttl_seconds: int = 3600, **changes: object) -> RunRequest:
    return RunRequest(run_id, "predict", b"{}", created_at=time.time(), ttl_seconds=ttl_seconds, **changes)  # type: ignore[arg-type]


def done() -> Outcome:
    return Outcome(RunStatus.COMPLETED, 1.0, result_json=b"1")


async def opened(
    url: str, namespace: str = NAMESPACE, strict: bool = False, orphan_idle_seconds: float = 60.0
) -> RedisJobStore:
    store = RedisJobStore(url, namespace, strict_durability=strict, orphan_idle_seconds=orphan_idle_seconds)
    await store.open()
    return store


QUEUE = "cortex:{p-one/app}:queue"


def _named(entries: list[dict[str, object]]) -> list[str]:
    return sorted(str(entry["name"]) for entry in entries)


# --- choosing the store ------------------------------------------------------------------


def test_store_from_url_takes_redis_and_rediss_urls(tmp_path: Path) -> None:
    for url in ("redis://localhost:6379/0", "rediss://:pw@cache.example:6380/2"):
        store = store_from_url(url, tmp_path, NAMESPACE, strict_durability=False)
        assert isinstance(store, RedisJobStore) and store.url == url


def test_an_unsupported_url_names_the_redis_forms_too(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"redis://\[:password@\]host:6379/0 \(rediss:// for TLS\)"):
        store_from_url("postgres://x", tmp_path, NAMESPACE)


# --- start-up: reachability, password, durability ----------------------------------------


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_redis_is_a_store_error_naming_the_url_without_its_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{_unused_port()}/0"
    with pytest.raises(StoreError) as caught:
        asyncio.run(opened(url))
    message = str(caught.value)
    assert message.startswith(f"CORTEX_STORE: cannot use Redis at redis://:***@127.0.0.1:{url.split(':')[3]}")
    assert "hunter2" not in message and "reachable" in message


def test_password_in_the_url_is_used_and_a_wrong_one_refused(start_redis: Callable[..., RedisServer]) -> None:
    server = start_redis(["--requirepass", "s3cret"])

    async def scenario() -> None:
        store = await opened(server.url)
        run, created = await store.submit(request_for("r1"), 10)
        assert created and await store.get("r1") == run
        await store.close()
        with pytest.raises(StoreError, match=r"redis://:\*\*\*@127\.0\.0\.1") as caught:
            await opened(server.url.replace("s3cret", "wrong"))
        assert "wrong" not in str(caught.value)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--appendonly", "no"], "appendonly is 'no'"),
        (["--maxmemory-policy", "allkeys-lru"], "maxmemory-policy is 'allkeys-lru'"),
    ],
)
def test_a_server_that_can_lose_runs_is_warned_about_or_refused(
    start_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture, args: list[str], problem: str
) -> None:
    server = start_redis(args)

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, logger="cortex.jobs"):
            store = await opened(server.url)
            await store.close()
        [record] = [r for r in caplog.records if "could be lost" in r.getMessage()]
        assert problem in record.getMessage()
        with pytest.raises(StoreError, match="CORTEX_STRICT_DURABILITY") as caught:
            await opened(server.url, strict=True)
        assert problem in str(caught.value)

    asyncio.run(scenario())


def test_a_durable_server_passes_the_strict_check(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, logger="cortex.jobs"):
            store = await opened(redis_url, strict=True)
            await store.close()

    asyncio.run(scenario())
    assert not [r for r in caplog.records if "could be lost" in r.getMessage()]


def test_a_server_with_config_disabled_is_said_to_be_unchecked(
    start_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(["--rename-command", "CONFIG", ""])

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, logger="cortex.jobs"):
            store = await opened(server.url)
            await store.close()
        assert any("cannot check durability" in r.getMessage() for r in caplog.records)
        with pytest.raises(StoreError, match="cannot check durability"):
            await opened(server.url, strict=True)

    asyncio.run(scenario())


# --- replicas sharing one namespace --------------------------------------------------------


def test_a_lease_that_runs_out_is_reclaimed_by_another_replica_and_the_late_result_fenced(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        first, second = await opened(redis_url), await opened(redis_url)
        await first.submit(request_for("r1", streaming=True), 10)
        now = time.time()
        claimed = await first.claim(now, LEASE)
        assert claimed is not None and claimed.attempt == 1
        assert await second.claim(now, LEASE) is None  # claimed once, across replicas
        # The first replica dies; the second recovers the run once the lease ran out.
        assert await second.recover(now + LEASE + 1, 3) == (1, 0)
        again = await second.claim(now + LEASE + 1, LEASE)
        assert again is not None and again.attempt == 2
        # The first replica's late writes belong to a stale attempt: refused, nothing written.
        assert not await first.heartbeat("r1", 1, now + 100)
        assert not await first.append_events("r1", 1, 0, [b"late"])
        assert await first.finish("r1", 1, done(), now + 2) is None
        finished = await second.finish("r1", 2, done(), now + LEASE + 2)
        assert finished is not None and finished.status is RunStatus.COMPLETED
        assert await first.get("r1") == finished  # any replica reads the same run
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_the_queue_is_a_stream_read_by_each_replica_as_a_consumer_of_one_group(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url, decode_responses=True)

    async def scenario() -> None:
        first, second = await opened(redis_url), await opened(redis_url)
        for run_id in ("r1", "r2", "r3"):
            await first.submit(request_for(run_id), 10)
        assert raw.xlen(QUEUE) == 3
        [group] = raw.xinfo_groups(QUEUE)
        assert (group["name"], group["pending"]) == ("workers", 0)
        one, two = await first.claim(time.time(), LEASE), await second.claim(time.time(), LEASE)
        assert one is not None and two is not None and (one.run_id, two.run_id) == ("r1", "r2")
        consumers = raw.xinfo_consumers(QUEUE, "workers")
        assert _named(consumers) == sorted([first.consumer, second.consumer])
        # Read and acknowledged in one step: nothing is left in either consumer's PEL.
        assert [consumer["pending"] for consumer in consumers] == [0, 0]
        assert raw.xlen(QUEUE) == 1
        await first.close()
        await second.close()

    asyncio.run(scenario())
    raw.close()


def test_a_generator_runs_chunks_are_a_stream_replayed_from_any_replica(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        writer, reader = await opened(redis_url), await opened(redis_url)
        await writer.submit(request_for("g1"), 10)
        run = await writer.claim(time.time(), LEASE)
        assert run is not None
        assert await writer.append_events("g1", run.attempt, 0, [b"a", b"b:c"])
        assert await writer.append_events("g1", run.attempt, 1, [b"b:c", b"d"])  # a retried append
        assert raw.type("cortex:{p-one/app}:events:g1") == b"stream"
        assert await reader.events_after("g1", -1, 10) == [(0, b"a"), (1, b"b:c"), (2, b"d")]
        assert await reader.events_after("g1", 0, 1) == [(1, b"b:c")]
        assert await reader.events_after("g1", 2, 10) == []
        assert not await writer.append_events("g1", run.attempt + 1, 3, [b"stale"])
        await writer.close()
        await reader.close()

    asyncio.run(scenario())
    raw.close()


def test_a_claim_cut_off_after_xreadgroup_is_taken_over_by_another_replica(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url, decode_responses=True)

    async def scenario() -> None:
        live = await opened(redis_url, orphan_idle_seconds=0.2)
        await live.submit(request_for("r1"), 10)
        # A replica reads the entry, then dies before its claim script runs.
        [[_, [(_, fields)]]] = raw.xreadgroup("workers", "dead", {QUEUE: ">"}, count=1)
        assert fields == {"run": "r1"}
        assert await live.claim(time.time(), LEASE) is None  # its only entry is in the dead PEL
        assert await live.recover(time.time(), 3) == (0, 0)  # not idle long enough yet
        assert await live.claim(time.time(), LEASE) is None
        await asyncio.sleep(0.3)
        assert await live.recover(time.time(), 3) == (0, 0)  # XAUTOCLAIM: now in live's PEL
        claimed = await live.claim(time.time(), LEASE)
        assert claimed is not None and (claimed.run_id, claimed.attempt) == ("r1", 1)
        assert raw.xpending(QUEUE, "workers")["pending"] == 0 and raw.xlen(QUEUE) == 0
        await asyncio.sleep(0.3)
        await live.recover(time.time(), 3)  # the dead consumer, idle with nothing pending, goes
        assert _named(raw.xinfo_consumers(QUEUE, "workers")) == [live.consumer]
        await live.close()

    asyncio.run(scenario())
    raw.close()


def test_a_pending_run_whose_queue_entry_was_lost_is_queued_again_by_recover(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url, decode_responses=True)

    async def scenario() -> None:
        store = await opened(redis_url)
        await store.submit(request_for("r1"), 10)
        raw.delete(QUEUE)  # as if the write of the entry was lost, group and all
        assert await store.claim(time.time(), LEASE) is None
        assert await store.recover(time.time(), 3) == (0, 0)
        claimed = await store.claim(time.time(), LEASE)
        assert claimed is not None and claimed.run_id == "r1"
        await store.close()

    asyncio.run(scenario())
    raw.close()


def test_a_cancel_on_one_replica_reaches_another_replicas_subscriber(redis_url: str) -> None:
    async def scenario() -> None:
        running, cancelling = await opened(redis_url), await opened(redis_url)
        neighbour = await opened(redis_url, "p-two/app")
        heard: list[str] = []
        unrelated: list[str] = []

        async def follow(store: RedisJobStore, into: list[str]) -> None:
            async for run_id in store.cancelled_runs():
                into.append(run_id)

        followers = [
            asyncio.create_task(follow(running, heard)),
            asyncio.create_task(follow(neighbour, unrelated)),
        ]
        await asyncio.sleep(0.1)  # subscribed
        await running.submit(request_for("r1"), 10)
        await running.claim(time.time(), LEASE)
        await cancelling.cancel("r1", time.time())
        deadline = time.monotonic() + 2
        while not heard and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert heard == ["r1"] and unrelated == []
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for store in (running, cancelling, neighbour):
            await store.close()

    asyncio.run(scenario())


def test_a_worker_stops_a_run_cancelled_through_another_replica_within_a_fraction_of_a_heartbeat(
    redis_url: str,
) -> None:
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    async def scenario() -> None:
        store, other = await opened(redis_url), await opened(redis_url)
        threads = ThreadRunner(2)
        spec = build_spec("slow", slow)
        timings = WorkerTimings(lease=15, heartbeat=5, poll=0.01)
        worker = RunWorker(store, {"slow": spec}.get, AdmissionGate(1, 1), threads, 60, 3, timings)
        worker.start()
        try:
            await store.submit(RunRequest("r1", "slow", b"{}", time.time(), 3600), 10)
            worker.wake()
            await asyncio.wait_for(started.wait(), 5)
            task = worker.running["r1"]
            cancelled_at = time.monotonic()
            await other.cancel("r1", time.time())
            await asyncio.wait({task}, timeout=2)
            assert task.cancelled(), "the run kept running after a cancel on another replica"
            assert time.monotonic() - cancelled_at < 1.0  # well under the 5 s heartbeat
        finally:
            await worker.stop()
            threads.shutdown()
            await store.close()
            await other.close()

    asyncio.run(scenario())


# --- expiry and durability ---------------------------------------------------------------


def test_a_finished_run_expires_in_redis_after_its_ttl_without_a_sweep(redis_url: str) -> None:
    async def scenario() -> None:
        store = await opened(redis_url)
        await store.submit(
            request_for("r1", ttl_seconds=1, idempotency_key="k", webhook_url="https://x/h"), 10
        )
        claimed = await store.claim(time.time(), LEASE)
        assert claimed is not None
        await store.append_events("r1", 1, 0, [b"a"])
        await store.finish("r1", 1, done(), time.time())
        assert await store.get("r1") is not None
        await asyncio.sleep(1.2)
        assert await store.get("r1") is None
        assert await store.events_after("r1", -1, 10) == []
        assert await store.claim_deliveries(time.time(), 10, LEASE) == []
        # The key is free again, and the sweep still clears the dead index entries.
        _, created = await store.submit(request_for("r2", idempotency_key="k"), 10)
        assert created
        assert await store.sweep_expired(time.time()) == 1
        assert await store.count_runs() == {RunStatus.PENDING: 1}
        await store.close()

    asyncio.run(scenario())


def test_acknowledged_runs_survive_a_kill_9_of_redis(redis_server: RedisServer, redis_url: str) -> None:
    """appendfsync everysec: a write is on disk at most ~1 s after it was acknowledged, so the
    test waits that long before killing the server (the documented loss window)."""

    async def submit_all(run_ids: list[str]) -> None:
        store = await opened(redis_url)
        for run_id in run_ids:
            await store.submit(request_for(run_id), 100)
        await store.close()

    async def check(run_ids: list[str]) -> None:
        store = await opened(redis_url)
        for run_id in run_ids:
            run = await store.get(run_id)
            assert run is not None and run.status is RunStatus.PENDING, run_id
        claimed = await store.claim(time.time(), LEASE)
        assert claimed is not None and claimed.run_id == run_ids[0]
        await store.close()

    run_ids = [f"r{i}" for i in range(20)]
    asyncio.run(submit_all(run_ids))
    time.sleep(1.5)
    redis_server.kill9()
    redis_server.restart()
    asyncio.run(check(run_ids))


def test_calls_fail_with_store_error_while_redis_is_down_and_work_once_it_is_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def scenario() -> None:
        store = await opened(redis_url)
        await store.submit(request_for("r1"), 10)
        redis_server.kill9()
        with pytest.raises(StoreError, match=r"Job store redis://127\.0\.0\.1:\d+/0: .*Error"):
            await store.get("r1")
        redis_server.restart()
        run, created = await store.submit(request_for("r2"), 10)
        assert created and await store.get("r2") == run
        await store.close()

    asyncio.run(scenario())
