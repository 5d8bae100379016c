"""What every JobStore promises, run against each store (written against the Protocol only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cortex.errors import IdempotencyConflictError, OverloadedError, RequestError
from cortex.jobs.models import Outcome, Run, RunError, RunRequest, RunStatus, WebhookStatus, webhook_payload
from cortex.jobs.redis_store import RedisJobStore
from cortex.jobs.sqlite_store import SQLiteJobStore
from cortex.jobs.store import JobStore

T = TypeVar("T")

NOW = 1000.0
LEASE = 30.0
HOOK = "https://example.com/hook"
NAMESPACE = "p-one/app"
OTHER_NAMESPACE = "p-two/app"  # another project's app, on the same backing store

# Each factory builds an unopened store of a namespace, backed by what `where` names: a
# directory for SQLite, a URL for Redis (so two calls with one `where` share their data).
STORES: dict[str, Callable[[Any, str], JobStore]] = {
    "sqlite": lambda directory, namespace: SQLiteJobStore(directory / "runs.db", namespace),
    "redis": lambda url, namespace: RedisJobStore(url, namespace),
}

# One event loop per test: a Redis client's connections belong to the loop that opened them.
_loop: asyncio.AbstractEventLoop | None = None


@pytest.fixture(autouse=True)
def event_loop_of_the_test() -> Iterator[None]:
    global _loop
    _loop = asyncio.new_event_loop()
    yield
    _loop.close()
    _loop = None


def sync(coro: Coroutine[Any, Any, T]) -> T:
    if _loop is None:  # imported by another module's tests: a loop per call is enough there
        return asyncio.run(coro)
    return _loop.run_until_complete(coro)


def request_for(run_id: str, created_at: float = 100.0, **changes: Any) -> RunRequest:
    fields: dict[str, Any] = {"function": "predict", "body": b'{"prompt":"hi"}', "ttl_seconds": 3600}
    return RunRequest(run_id=run_id, created_at=created_at, **{**fields, **changes})


def completed(run_time_ms: float = 12.5, result: bytes = b'{"text":"hi"}') -> Outcome:
    return Outcome(RunStatus.COMPLETED, run_time_ms, result_json=result)


@pytest.fixture(params=sorted(STORES))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def where(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """What the store of this kind is backed by: a directory, or an emptied Redis database."""
    return request.getfixturevalue("redis_url") if kind == "redis" else tmp_path


def opened_store(kind: str, where: Any, namespace: str) -> Iterator[JobStore]:
    job_store = STORES[kind](where, namespace)
    sync(job_store.open())
    yield job_store
    sync(job_store.close())


@pytest.fixture
def store(kind: str, where: Any) -> Iterator[JobStore]:
    yield from opened_store(kind, where, NAMESPACE)


@pytest.fixture
def neighbour(kind: str, where: Any, store: JobStore) -> Iterator[JobStore]:
    """Another app's store on the same data as `store` (opened after it)."""
    yield from opened_store(kind, where, OTHER_NAMESPACE)


def submit(store: JobStore, run_id: str, max_pending: int = 100, **changes: Any) -> Run:
    run, created = sync(store.submit(request_for(run_id, **changes), max_pending))
    assert created
    return run


def start(store: JobStore, run_id: str, now: float = NOW, **changes: Any) -> Run:
    """Submit a run and claim it (the store must hold no other pending run)."""
    submit(store, run_id, **changes)
    run = sync(store.claim(now, LEASE))
    assert run is not None and run.run_id == run_id
    return run


def get(store: JobStore, run_id: str) -> Run:
    run = sync(store.get(run_id))
    assert run is not None, f"run {run_id} is gone"
    return run


# --- submit and idempotency -------------------------------------------------------------------


def test_submitted_run_is_pending_and_reads_back_equal(store: JobStore) -> None:
    request = request_for(
        "r1",
        body=b'{"prompt":"\xc3\xa9"}\x00\xff',  # stored as the bytes received, not decoded
        streaming=True,
        webhook_url=HOOK,
        webhook_secret="s3cret",
        idempotency_key="key-1",
        body_hash="hash-1",
        shape='{"kind":"chat","model":"m","encoding_format":"float"}',
    )
    run, created = sync(store.submit(request, 10))
    assert created
    assert (run.request, run.status, run.attempt) == (request, RunStatus.PENDING, 0)
    assert (run.started_at, run.completed_at, run.lease_until, run.error) == (None, None, None, None)
    assert (run.webhook_status, run.webhook_attempts) == (None, 0)  # no delivery until it ends
    assert get(store, "r1") == run


def test_an_unknown_run_is_none(store: JobStore) -> None:
    assert sync(store.get("nope")) is None


def test_idempotent_submit_returns_the_same_run(store: JobStore) -> None:
    first = submit(store, "r1", idempotency_key="k", body_hash="h1")
    again, created = sync(store.submit(request_for("r2", idempotency_key="k", body_hash="h1"), 10))
    assert not created
    assert again == first
    assert sync(store.get("r2")) is None


def test_idempotent_submit_returns_the_run_even_when_it_finished(store: JobStore) -> None:
    start(store, "r1", idempotency_key="k", body_hash="h1")
    sync(store.finish("r1", 1, completed(), NOW + 1))
    again, created = sync(store.submit(request_for("r2", idempotency_key="k", body_hash="h1"), 10))
    assert not created
    assert (again.run_id, again.status) == ("r1", RunStatus.COMPLETED)


def test_reused_key_with_another_body_is_a_conflict(store: JobStore) -> None:
    submit(store, "r1", idempotency_key="k", body_hash="h1")
    with pytest.raises(IdempotencyConflictError) as caught:
        sync(store.submit(request_for("r2", idempotency_key="k", body_hash="h2"), 10))
    assert str(caught.value) == (
        "Idempotency-Key 'k' was already used with a different body (run r1). "
        "Use a new key for a new request."
    )
    assert sync(store.get("r2")) is None


def test_key_of_an_expired_run_is_free_again(store: JobStore) -> None:
    start(store, "r1", idempotency_key="k", body_hash="h1", ttl_seconds=10)
    sync(store.finish("r1", 1, completed(), NOW))  # expires at NOW + 10
    run, created = sync(store.submit(request_for("r2", NOW + 10, idempotency_key="k", body_hash="h2"), 10))
    assert created and run.run_id == "r2"
    assert sync(store.get("r1")) is None


def test_pending_limit_raises_overloaded(store: JobStore) -> None:
    submit(store, "r1", max_pending=2)
    submit(store, "r2", max_pending=2, idempotency_key="k", body_hash="h")
    with pytest.raises(OverloadedError) as caught:
        sync(store.submit(request_for("r3"), 2))
    assert str(caught.value) == "Too many queued runs: 2 pending (CORTEX_MAX_QUEUE=2). Retry after a moment."
    assert sync(store.get("r3")) is None
    # A retry of an accepted request is answered even when the queue is full.
    again, created = sync(store.submit(request_for("r4", idempotency_key="k", body_hash="h"), 2))
    assert (again.run_id, created) == ("r2", False)


def test_processing_runs_do_not_count_against_the_pending_limit(store: JobStore) -> None:
    start(store, "r1")
    submit(store, "r2", max_pending=1)
    with pytest.raises(OverloadedError):
        sync(store.submit(request_for("r3"), 1))


# --- claim, heartbeat, finish -----------------------------------------------------------------


def test_claim_takes_the_oldest_pending_run_once(store: JobStore) -> None:
    submit(store, "late", created_at=200.0)
    submit(store, "first", created_at=100.0)
    submit(store, "second", created_at=100.0)  # same instant: insertion order decides
    claimed = [sync(store.claim(NOW + i, LEASE)) for i in range(4)]
    assert [run and run.run_id for run in claimed] == ["first", "second", "late", None]
    first = claimed[0]
    assert first is not None
    assert (first.status, first.attempt) == (RunStatus.PROCESSING, 1)
    assert (first.started_at, first.lease_until) == (NOW, NOW + LEASE)
    assert get(store, "first") == first


def test_claim_returns_none_when_nothing_is_pending(store: JobStore) -> None:
    assert sync(store.claim(NOW, LEASE)) is None


def test_heartbeat_extends_the_lease_of_the_current_attempt_only(store: JobStore) -> None:
    start(store, "r1")
    assert sync(store.heartbeat("r1", 1, NOW + 100))
    assert get(store, "r1").lease_until == NOW + 100
    assert not sync(store.heartbeat("r1", 2, NOW + 200))
    assert not sync(store.heartbeat("nope", 1, NOW + 200))
    sync(store.cancel("r1", NOW + 1))
    assert not sync(store.heartbeat("r1", 1, NOW + 200))
    assert get(store, "r1").lease_until is None


def test_finish_records_the_outcome_and_its_expiry(store: JobStore) -> None:
    start(store, "r1", ttl_seconds=60)
    run = sync(store.finish("r1", 1, completed(12.5, b'{"text":"hi"}'), NOW + 2))
    assert run is not None
    assert (run.status, run.completed_at, run.run_time_ms) == (RunStatus.COMPLETED, NOW + 2, 12.5)
    assert (run.result_json, run.error, run.lease_until) == (b'{"text":"hi"}', None, None)
    assert run.expires_at == NOW + 62
    assert (run.webhook_status, run.webhook_attempts) == (None, 0)
    assert get(store, "r1") == run
    assert sync(store.claim_deliveries(NOW + 100, 10, LEASE)) == []  # no webhook, no delivery


def test_failed_outcome_keeps_its_error(store: JobStore) -> None:
    start(store, "r1")
    error = RunError("ValueError", "predict(): bad prompt")
    sync(store.finish("r1", 1, Outcome(RunStatus.FAILED, 3.0, error=error), NOW + 1))
    run = get(store, "r1")
    assert (run.status, run.error, run.result_json) == (RunStatus.FAILED, error, None)


def test_finish_with_a_stale_attempt_writes_nothing(store: JobStore) -> None:
    start(store, "r1")
    assert sync(store.recover(NOW + LEASE + 1, 3)) == (1, 0)
    second = sync(store.claim(NOW + 40, LEASE))
    assert second is not None and second.attempt == 2
    assert sync(store.finish("r1", 1, completed(), NOW + 41)) is None
    assert get(store, "r1") == second
    assert sync(store.finish("nope", 1, completed(), NOW + 41)) is None


def test_finish_of_a_run_never_claimed_writes_nothing(store: JobStore) -> None:
    pending = submit(store, "r1")
    assert sync(store.finish("r1", 0, completed(), NOW)) is None
    assert get(store, "r1") == pending


def test_a_finished_run_is_not_finished_twice(store: JobStore) -> None:
    start(store, "r1")
    first = sync(store.finish("r1", 1, completed(1.0, b"1"), NOW + 1))
    assert sync(store.finish("r1", 1, completed(2.0, b"2"), NOW + 2)) is None
    assert get(store, "r1") == first


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_of_a_pending_run_takes_it_off_the_queue(store: JobStore) -> None:
    submit(store, "r1")
    run, before = sync(store.cancel("r1", NOW))
    assert before is RunStatus.PENDING
    assert run is not None
    assert (run.status, run.completed_at, run.run_time_ms) == (RunStatus.CANCELLED, NOW, 0.0)
    assert run.error == RunError("Cancelled", "Run cancelled by request.")
    assert get(store, "r1") == run
    assert sync(store.claim(NOW, LEASE)) is None


def test_cancel_of_a_processing_run_counts_its_elapsed_time(store: JobStore) -> None:
    start(store, "r1", now=NOW)
    run, before = sync(store.cancel("r1", NOW + 2.5))
    assert before is RunStatus.PROCESSING
    assert run is not None
    assert (run.status, run.run_time_ms, run.lease_until) == (RunStatus.CANCELLED, 2500.0, None)


def test_cancelled_run_is_never_overwritten_by_a_late_result(store: JobStore) -> None:
    start(store, "r1")
    cancelled, _ = sync(store.cancel("r1", NOW + 1))
    assert sync(store.finish("r1", 1, completed(), NOW + 2)) is None
    assert not sync(store.append_events("r1", 1, 1, [b"late"]))
    assert sync(store.recover(NOW + 1000, 1)) == (0, 0)
    assert get(store, "r1") == cancelled


def test_cancel_of_a_finished_run_returns_it_unchanged(store: JobStore) -> None:
    start(store, "r1")
    finished = sync(store.finish("r1", 1, completed(), NOW + 1))
    assert sync(store.cancel("r1", NOW + 2)) == (finished, RunStatus.COMPLETED)
    assert get(store, "r1") == finished


def test_cancel_of_an_unknown_run_is_none(store: JobStore) -> None:
    assert sync(store.cancel("nope", NOW)) == (None, None)


def test_cancel_queues_the_webhook_with_a_cancelled_payload(store: JobStore) -> None:
    submit(store, "r1", webhook_url=HOOK)
    run, _ = sync(store.cancel("r1", NOW))
    assert run is not None and run.webhook_status is WebhookStatus.PENDING
    [delivery] = sync(store.claim_deliveries(NOW, 10, LEASE))
    assert json.loads(delivery.payload) == {
        "run_id": "r1",
        "status": "cancelled",
        "run_time_ms": 0.0,
        "error": {"type": "Cancelled", "message": "Run cancelled by request."},
    }


# --- recovery after a crash ------------------------------------------------------------------


def test_recover_requeues_then_fails_interrupted_after_max_attempts(store: JobStore) -> None:
    start(store, "r1", webhook_url=HOOK)
    now = NOW
    for attempt in (1, 2):
        now += LEASE + 1  # the lease of this attempt ran out: its process died
        assert sync(store.recover(now, 3)) == (1, 0)
        requeued = get(store, "r1")
        assert (requeued.status, requeued.attempt, requeued.lease_until) == (RunStatus.PENDING, attempt, None)
        claimed = sync(store.claim(now, LEASE))
        assert claimed is not None and claimed.attempt == attempt + 1
    now += LEASE + 1
    assert sync(store.recover(now, 3)) == (0, 1)
    failed = get(store, "r1")
    assert (failed.status, failed.attempt, failed.completed_at) == (RunStatus.FAILED, 3, now)
    assert failed.error == RunError(
        "Interrupted", "The server stopped 3 times while running this run (CORTEX_MAX_ATTEMPTS=3)."
    )
    assert failed.webhook_status is WebhookStatus.PENDING
    [delivery] = sync(store.claim_deliveries(now, 10, LEASE))
    assert json.loads(delivery.payload)["error"]["type"] == "Interrupted"


def test_recover_leaves_live_leases_and_pending_runs_alone(store: JobStore) -> None:
    start(store, "r1")  # leased until NOW + LEASE
    submit(store, "r2")
    assert sync(store.recover(NOW + LEASE, 1)) == (0, 0)
    assert sync(store.heartbeat("r1", 1, NOW + 100))
    assert sync(store.recover(NOW + 99, 1)) == (0, 0)
    assert get(store, "r1").status is RunStatus.PROCESSING
    assert get(store, "r2").status is RunStatus.PENDING


# --- stream events ---------------------------------------------------------------------------


def test_events_are_read_back_in_order_after_a_seq(store: JobStore) -> None:
    start(store, "r1", streaming=True)
    assert sync(store.append_events("r1", 1, 1, [b'{"token":"a"}', b'{"token":"b"}']))
    assert sync(store.append_events("r1", 1, 3, [b'{"token":"c"}']))
    assert sync(store.events_after("r1", 0, 100)) == [
        (1, b'{"token":"a"}'),
        (2, b'{"token":"b"}'),
        (3, b'{"token":"c"}'),
    ]
    assert sync(store.events_after("r1", 1, 1)) == [(2, b'{"token":"b"}')]
    assert sync(store.events_after("r1", 3, 100)) == []
    assert sync(store.events_after("nope", 0, 100)) == []


def test_events_of_a_stale_attempt_are_refused(store: JobStore) -> None:
    submit(store, "r1", streaming=True)
    assert not sync(store.append_events("r1", 0, 1, [b"x"]))  # still pending
    sync(store.claim(NOW, LEASE))
    assert not sync(store.append_events("r1", 2, 1, [b"x"]))
    assert not sync(store.append_events("nope", 1, 1, [b"x"]))
    assert sync(store.events_after("r1", 0, 100)) == []


def test_a_new_attempt_restarts_the_stream(store: JobStore) -> None:
    start(store, "r1", streaming=True)
    sync(store.append_events("r1", 1, 1, [b"a", b"b"]))
    sync(store.recover(NOW + LEASE + 1, 3))
    sync(store.claim(NOW + LEASE + 1, LEASE))
    assert sync(store.events_after("r1", 0, 100)) == []
    assert sync(store.append_events("r1", 2, 1, [b"again"]))
    assert sync(store.events_after("r1", 0, 100)) == [(1, b"again")]


def test_events_outlive_the_end_of_the_run(store: JobStore) -> None:
    start(store, "r1", streaming=True)
    sync(store.append_events("r1", 1, 1, [b"a"]))
    sync(store.finish("r1", 1, completed(), NOW + 1))
    assert sync(store.events_after("r1", 0, 100)) == [(1, b"a")]


# --- webhook deliveries ----------------------------------------------------------------------


def test_finish_queues_the_webhook_in_the_same_step(store: JobStore) -> None:
    run = start(store, "r1", webhook_url=HOOK, webhook_secret="s3cret")
    outcome = completed()
    finished = sync(store.finish("r1", 1, outcome, NOW + 1))
    assert finished is not None
    assert (finished.webhook_status, finished.webhook_attempts) == (WebhookStatus.PENDING, 0)
    [delivery] = sync(store.claim_deliveries(NOW + 1, 10, LEASE))
    assert delivery.delivery_id.startswith("msg_") and len(delivery.delivery_id) == 36
    assert (delivery.run_id, delivery.url, delivery.cerebrium_secret) == ("r1", HOOK, "s3cret")
    assert delivery.payload == webhook_payload(run.request, outcome)
    assert delivery.attempts == 0


def test_a_claimed_delivery_is_leased_to_one_dispatcher(store: JobStore) -> None:
    start(store, "r1", webhook_url=HOOK)
    sync(store.finish("r1", 1, completed(), NOW))
    [delivery] = sync(store.claim_deliveries(NOW, 10, LEASE))
    assert sync(store.claim_deliveries(NOW, 10, LEASE)) == []
    assert sync(store.claim_deliveries(NOW + LEASE - 0.5, 10, LEASE)) == []
    # Nobody recorded an attempt before the lease ran out (the dispatcher died): due again.
    [again] = sync(store.claim_deliveries(NOW + LEASE, 10, LEASE))
    assert (again.delivery_id, again.attempts) == (delivery.delivery_id, 0)


def test_claim_deliveries_takes_the_oldest_due_first_up_to_the_limit(store: JobStore) -> None:
    for i in (1, 2, 3):
        start(store, f"r{i}", webhook_url=HOOK)
        sync(store.finish(f"r{i}", 1, completed(), NOW + i))  # due at NOW + i
    assert [d.run_id for d in sync(store.claim_deliveries(NOW + 2, 10, LEASE))] == ["r1", "r2"]
    assert [d.run_id for d in sync(store.claim_deliveries(NOW + 5, 1, LEASE))] == ["r3"]


def test_a_delivered_webhook_shows_on_the_run(store: JobStore) -> None:
    start(store, "r1", webhook_url=HOOK)
    sync(store.finish("r1", 1, completed(), NOW))
    [delivery] = sync(store.claim_deliveries(NOW, 10, LEASE))
    sync(store.record_delivery(delivery.delivery_id, 1, True, None, None))
    run = get(store, "r1")
    assert (run.webhook_status, run.webhook_attempts) == (WebhookStatus.DELIVERED, 1)
    assert sync(store.claim_deliveries(NOW + 10_000, 10, LEASE)) == []


def test_a_failed_delivery_is_rescheduled_then_given_up(store: JobStore) -> None:
    start(store, "r1", webhook_url=HOOK)
    sync(store.finish("r1", 1, completed(), NOW))
    [delivery] = sync(store.claim_deliveries(NOW, 10, LEASE))
    sync(store.record_delivery(delivery.delivery_id, 1, False, NOW + 5, "HTTP 500 from the receiver"))
    run = get(store, "r1")
    assert (run.webhook_status, run.webhook_attempts) == (WebhookStatus.PENDING, 1)
    assert sync(store.claim_deliveries(NOW + 4.9, 10, LEASE)) == []
    [retry] = sync(store.claim_deliveries(NOW + 5, 10, LEASE))
    assert (retry.delivery_id, retry.attempts) == (delivery.delivery_id, 1)
    sync(store.record_delivery(delivery.delivery_id, 2, False, None, "HTTP 500 from the receiver"))
    run = get(store, "r1")
    assert (run.webhook_status, run.webhook_attempts) == (WebhookStatus.FAILED, 2)
    assert sync(store.claim_deliveries(NOW + 10_000, 10, LEASE)) == []


def test_record_finished_stores_a_terminal_run_with_its_webhook(store: JobStore) -> None:
    request = request_for("r1", webhook_url=HOOK)
    outcome = completed(250.0)
    run = sync(store.record_finished(request, outcome, NOW))
    assert (run.request, run.status, run.attempt) == (request, RunStatus.COMPLETED, 1)
    assert (run.started_at, run.completed_at, run.run_time_ms) == (NOW - 0.25, NOW, 250.0)
    assert run.result_json == outcome.result_json
    assert run.webhook_status is WebhookStatus.PENDING
    assert get(store, "r1") == run
    assert sync(store.claim(NOW, LEASE)) is None  # never queued to run again
    [delivery] = sync(store.claim_deliveries(NOW, 10, LEASE))
    assert delivery.payload == webhook_payload(request, outcome)


# --- listing ---------------------------------------------------------------------------------


def test_list_runs_pages_newest_first(store: JobStore) -> None:
    for run_id, created_at in [("a", 100.0), ("b", 101.0), ("c", 101.0), ("d", 102.0), ("e", 103.0)]:
        submit(store, run_id, created_at=created_at)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        runs, cursor = sync(store.list_runs(None, None, 2, cursor))
        pages.append([run.run_id for run in runs])
        if cursor is None:
            break
    assert pages == [["e", "d"], ["c", "b"], ["a"]]  # c after b at the same instant: newer first
    runs, cursor = sync(store.list_runs(None, None, 5, None))
    assert ([run.run_id for run in runs], cursor) == (["e", "d", "c", "b", "a"], None)
    assert runs[0] == get(store, "e")


def test_list_runs_filters_by_status_and_function(store: JobStore) -> None:
    start(store, "p1", created_at=100.0)
    sync(store.finish("p1", 1, completed(), NOW))
    submit(store, "p2", created_at=101.0)
    submit(store, "e1", created_at=102.0, function="embed")
    start(store, "e2", created_at=99.0, function="embed")  # the oldest, so claimed first
    sync(store.finish("e2", 1, completed(), NOW))

    def ids(status: RunStatus | None, function: str | None, limit: int = 10) -> list[str]:
        return [run.run_id for run in sync(store.list_runs(status, function, limit, None))[0]]

    assert ids(None, "embed") == ["e1", "e2"]
    assert ids(RunStatus.COMPLETED, None) == ["p1", "e2"]
    assert ids(RunStatus.COMPLETED, "predict") == ["p1"]
    assert ids(RunStatus.PROCESSING, None) == []
    first, cursor = sync(store.list_runs(RunStatus.PENDING, None, 1, None))
    assert [run.run_id for run in first] == ["e1"]
    second, cursor = sync(store.list_runs(RunStatus.PENDING, None, 1, cursor))
    assert ([run.run_id for run in second], cursor) == (["p2"], None)


def test_list_runs_with_a_forged_cursor_is_refused(store: JobStore) -> None:
    with pytest.raises(RequestError) as caught:
        sync(store.list_runs(None, None, 10, "not-a-cursor"))
    assert str(caught.value) == (
        "Invalid cursor 'not-a-cursor': pass the next_cursor of a previous page, or omit it."
    )


# --- expiry ----------------------------------------------------------------------------------


def test_an_expired_run_is_still_returned_until_swept(store: JobStore) -> None:
    start(store, "r1", ttl_seconds=10)
    sync(store.finish("r1", 1, completed(), NOW))
    run = get(store, "r1")
    assert not run.is_expired(NOW + 9.9)
    assert run.is_expired(NOW + 10)


def test_sweep_deletes_expired_runs_with_their_events_and_deliveries(store: JobStore) -> None:
    start(store, "short", ttl_seconds=10, webhook_url=HOOK, streaming=True)
    sync(store.append_events("short", 1, 1, [b"a"]))
    sync(store.finish("short", 1, completed(), NOW))  # expires at NOW + 10
    start(store, "long", ttl_seconds=100)
    sync(store.finish("long", 1, completed(), NOW))
    start(store, "running", ttl_seconds=1)
    submit(store, "waiting", ttl_seconds=1)

    assert sync(store.sweep_expired(NOW + 9.9)) == 0
    assert sync(store.sweep_expired(NOW + 10)) == 1
    assert sync(store.get("short")) is None
    assert sync(store.events_after("short", 0, 100)) == []
    assert sync(store.claim_deliveries(NOW + 10, 10, LEASE)) == []
    assert [get(store, run_id).status for run_id in ("long", "running", "waiting")] == [
        RunStatus.COMPLETED,
        RunStatus.PROCESSING,
        RunStatus.PENDING,
    ]
    assert sync(store.sweep_expired(NOW + 10_000)) == 1  # "long"; unfinished runs never expire


# --- namespaces: another app's runs on the same backing store are unknown runs ---------------


def test_a_run_of_another_namespace_is_unknown(store: JobStore, neighbour: JobStore) -> None:
    run = submit(store, "r1", webhook_url=HOOK, streaming=True)
    assert sync(neighbour.get("r1")) is None
    assert sync(neighbour.list_runs(None, None, 10, None)) == ([], None)
    assert sync(neighbour.list_runs(RunStatus.PENDING, "predict", 10, None)) == ([], None)
    assert sync(neighbour.cancel("r1", NOW)) == (None, None)  # as for "nope": nothing changes
    assert get(store, "r1") == run
    assert sync(store.list_runs(None, None, 10, None)) == ([run], None)


def test_claim_takes_only_runs_of_its_namespace(store: JobStore, neighbour: JobStore) -> None:
    submit(store, "mine-old", created_at=50.0)  # older than anything of the neighbour's
    submit(neighbour, "theirs", created_at=100.0)
    claimed = sync(neighbour.claim(NOW, LEASE))
    assert claimed is not None and claimed.run_id == "theirs"
    assert sync(neighbour.claim(NOW, LEASE)) is None
    assert get(store, "mine-old").status is RunStatus.PENDING
    mine = sync(store.claim(NOW, LEASE))
    assert mine is not None and mine.run_id == "mine-old"
    assert sync(store.claim(NOW, LEASE)) is None


def test_another_namespace_cannot_touch_a_running_attempt(store: JobStore, neighbour: JobStore) -> None:
    running = start(store, "r1", streaming=True)
    assert not sync(neighbour.heartbeat("r1", 1, NOW + 100))
    assert not sync(neighbour.append_events("r1", 1, 1, [b"forged"]))
    assert sync(neighbour.finish("r1", 1, completed(), NOW + 1)) is None
    assert sync(neighbour.cancel("r1", NOW + 1)) == (None, None)
    assert get(store, "r1") == running
    assert sync(store.events_after("r1", 0, 100)) == []
    assert sync(store.finish("r1", 1, completed(), NOW + 2)) is not None


def test_events_of_another_namespace_are_not_read(store: JobStore, neighbour: JobStore) -> None:
    start(store, "r1", streaming=True)
    assert sync(store.append_events("r1", 1, 1, [b"a", b"b"]))
    sync(store.finish("r1", 1, completed(), NOW + 1))
    assert sync(neighbour.events_after("r1", 0, 100)) == []
    assert sync(store.events_after("r1", 0, 100)) == [(1, b"a"), (2, b"b")]


def test_idempotency_keys_are_per_namespace(store: JobStore, neighbour: JobStore) -> None:
    mine = submit(store, "r1", idempotency_key="order-42", body_hash="h1")
    # Another body under the same key: in another app that is another request, not a conflict.
    theirs, created = sync(
        neighbour.submit(request_for("r2", idempotency_key="order-42", body_hash="h2"), 10)
    )
    assert created and theirs.run_id == "r2"
    again, created = sync(store.submit(request_for("r3", idempotency_key="order-42", body_hash="h1"), 10))
    assert (again, created) == (mine, False)
    again, created = sync(neighbour.submit(request_for("r4", idempotency_key="order-42", body_hash="h2"), 10))
    assert (again, created) == (theirs, False)
    with pytest.raises(IdempotencyConflictError):
        sync(neighbour.submit(request_for("r5", idempotency_key="order-42", body_hash="h1"), 10))


def test_the_pending_limit_counts_only_its_namespace(store: JobStore, neighbour: JobStore) -> None:
    submit(store, "r1", max_pending=1)
    submit(neighbour, "r2", max_pending=1)  # the other app's queue is full, not this one's
    with pytest.raises(OverloadedError):
        sync(store.submit(request_for("r3"), 1))


def test_recover_takes_only_runs_of_its_namespace(store: JobStore, neighbour: JobStore) -> None:
    start(store, "mine")
    start(neighbour, "theirs")
    expired = NOW + LEASE + 1  # both leases ran out
    assert sync(neighbour.recover(expired, 1)) == (0, 1)
    assert get(neighbour, "theirs").status is RunStatus.FAILED
    assert get(store, "mine").status is RunStatus.PROCESSING
    assert sync(neighbour.recover(expired, 3)) == (0, 0)
    assert sync(store.recover(expired, 3)) == (1, 0)
    assert get(store, "mine").status is RunStatus.PENDING


def test_deliveries_are_claimed_only_in_their_namespace(store: JobStore, neighbour: JobStore) -> None:
    start(store, "mine", webhook_url=HOOK)
    sync(store.finish("mine", 1, completed(), NOW))
    sync(neighbour.record_finished(request_for("theirs", webhook_url=HOOK), completed(), NOW + 1))
    [theirs] = sync(neighbour.claim_deliveries(NOW + 1, 10, LEASE))
    assert theirs.run_id == "theirs"
    assert sync(neighbour.claim_deliveries(NOW + 1, 10, LEASE)) == []
    [mine] = sync(store.claim_deliveries(NOW + 1, 10, LEASE))
    assert mine.run_id == "mine"
    # Recording an attempt on another namespace's delivery changes nothing.
    sync(neighbour.record_delivery(mine.delivery_id, 1, True, None, None))
    assert (get(store, "mine").webhook_status, get(store, "mine").webhook_attempts) == (
        WebhookStatus.PENDING,
        0,
    )
    sync(store.record_delivery(mine.delivery_id, 1, True, None, None))
    assert get(store, "mine").webhook_status is WebhookStatus.DELIVERED
    assert get(neighbour, "theirs").webhook_status is WebhookStatus.PENDING


def test_sweep_never_deletes_a_live_run_of_either_namespace(store: JobStore, neighbour: JobStore) -> None:
    start(store, "mine", ttl_seconds=100)
    sync(store.finish("mine", 1, completed(), NOW))  # expires at NOW + 100
    start(neighbour, "theirs", ttl_seconds=10)
    sync(neighbour.finish("theirs", 1, completed(), NOW))  # expires at NOW + 10
    assert sync(neighbour.sweep_expired(NOW + 10)) == 1
    assert sync(neighbour.get("theirs")) is None
    assert get(store, "mine").status is RunStatus.COMPLETED
