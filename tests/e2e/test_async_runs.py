"""`?async=true`: 202, durable runs, polling, webhooks, TTL, cancel, idempotency, replay."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import APPS, TEST_WEBHOOK_SECRET, serving, wait_for

LOCAL = "127.0.0.0/8"  # the test receivers listen on loopback


@pytest.fixture
def jobs():
    with serving(APPS / "jobs", webhook_allow_cidrs=LOCAL, webhook_retry_schedule="0.1,0.1,0.1") as served:
        yield served


def submit(served, function: str, body: dict | None = None, query: str = "", **kwargs) -> httpx.Response:
    with served.client() as client:
        return client.post(f"{served.base}/{function}?async=true{query}", json=body or {}, **kwargs)


def poll_until_done(served, run_id: str, timeout: float = 15) -> dict:
    with served.client() as client:

        def done() -> dict | None:
            response = client.get(f"{served.base}/runs/{run_id}")
            return response.json() if response.status_code == 200 else None

        result: dict = wait_for(done, timeout, f"run {run_id} to finish")
        return result


def test_submit_answers_202_with_location_then_poll_gives_the_result(jobs):
    response = submit(jobs, "add", {"a": 2, "b": 3})
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    assert response.json() == {"run_id": run_id, "status": "pending"}
    assert response.headers["x-request-id"] == run_id
    assert response.headers["location"] == f"/v4/p-local/jobs/runs/{run_id}"
    run = poll_until_done(jobs, run_id)
    assert run["status"] == "completed"
    assert run["result"] == {"sum": 5}
    assert run["function"] == "add"
    assert run["run_time_ms"] >= 0
    for key in ("created_at", "started_at", "completed_at", "expires_at"):
        assert run[key].endswith("Z")
    assert "webhook" not in run


def test_poll_is_202_while_the_run_is_going(jobs):
    run_id = submit(jobs, "asleep", {"seconds": 1}).json()["run_id"]
    with jobs.client() as client:
        response = client.get(f"{jobs.base}/runs/{run_id}")
    assert response.status_code == 202
    assert response.json()["status"] in ("pending", "processing")
    assert set(response.json()) == {"run_id", "function", "status", "created_at", "started_at"}


def test_invalid_arguments_are_422_and_nothing_is_stored(jobs):
    response = submit(jobs, "add", {"a": "x"})
    assert response.status_code == 422
    with jobs.client() as client:
        assert client.get(f"{jobs.base}/runs").json()["runs"] == []


def test_failed_run_reports_its_error(jobs):
    run_id = submit(jobs, "fail", {"message": "bad input"}).json()["run_id"]
    run = poll_until_done(jobs, run_id)
    assert run["status"] == "failed"
    assert run["error"] == {"type": "ValueError", "message": "bad input"}


def test_unknown_run_is_404(jobs):
    with jobs.client() as client:
        response = client.get(f"{jobs.base}/runs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_result_ttl_expires_the_run(jobs):
    run_id = submit(jobs, "add", {"a": 1, "b": 1}, headers={"x-bf-async-job-result-ttl": "1"}).json()[
        "run_id"
    ]
    poll_until_done(jobs, run_id)
    time.sleep(1.2)
    with jobs.client() as client:
        response = client.get(f"{jobs.base}/runs/{run_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "expired"


@pytest.mark.parametrize("ttl", ["0", "-5", "soon", "1.5"])
def test_a_ttl_that_is_not_a_positive_integer_is_400(jobs, ttl):
    response = submit(jobs, "add", {"a": 1, "b": 1}, headers={"x-cortex-result-ttl": ttl})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"Header x-cortex-result-ttl must be a whole number of seconds from 1 to 31622400, got {ttl!r}."
    )


def test_webhook_receives_the_signed_envelope(jobs, webhook_receiver):
    run_id = submit(jobs, "add", {"a": 2, "b": 2}, f"&webhookEndpoint={webhook_receiver.url}").json()[
        "run_id"
    ]
    [hook] = webhook_receiver.wait_for(1)
    Webhook(TEST_WEBHOOK_SECRET).verify(hook.body, hook.headers)  # raises if the signature is wrong
    assert hook.headers["content-type"] == "application/json"
    payload = hook.json()
    assert payload["run_id"] == run_id
    assert payload["status"] == "completed"
    assert payload["result"] == {"sum": 4}
    run = wait_for(lambda: _delivered(jobs, run_id), 10, "the delivery to be recorded")
    assert run["webhook"] == {"status": "delivered", "attempts": 1}


def _delivered(served, run_id: str) -> dict | None:
    with served.client() as client:
        run = client.get(f"{served.base}/runs/{run_id}").json()
    return run if run.get("webhook", {}).get("status") == "delivered" else None


def test_webhook_on_a_sync_call(jobs, webhook_receiver):
    with jobs.client() as client:
        response = client.post(
            f"{jobs.base}/add?webhookEndpoint={webhook_receiver.url}", json={"a": 1, "b": 2}
        )
    assert response.status_code == 200
    assert response.json()["result"] == {"sum": 3}
    [hook] = webhook_receiver.wait_for(1)
    assert hook.json()["run_id"] == response.json()["run_id"]
    assert hook.json()["result"] == {"sum": 3}
    Webhook(TEST_WEBHOOK_SECRET).verify(hook.body, hook.headers)


def test_cerebrium_signature_when_a_webhook_secret_is_sent(jobs, webhook_receiver):
    secret = "my-cerebrium-secret"
    run_id = submit(
        jobs,
        "add",
        {"a": 1, "b": 1},
        f"&webhookEndpoint={webhook_receiver.url}",
        headers={"x-webhook-secret": secret},
    ).json()["run_id"]
    [hook] = webhook_receiver.wait_for(1)
    timestamp = hook.headers["x-cerebrium-webhook-timestamp"]
    expected = hmac.new(
        secret.encode(), f"{run_id}.{timestamp}.".encode() + hook.body, hashlib.sha256
    ).hexdigest()
    assert hook.headers["x-cerebrium-webhook-signature"] == f"v1,{expected}"
    assert hook.headers["x-request-id"] == run_id


def test_failing_receiver_is_retried_with_a_stable_webhook_id(jobs, webhook_receiver):
    webhook_receiver.responses = [500, 503]
    run_id = submit(jobs, "add", {"a": 1, "b": 1}, f"&webhookEndpoint={webhook_receiver.url}").json()[
        "run_id"
    ]
    hooks = webhook_receiver.wait_for(3)
    assert len({hook.headers["webhook-id"] for hook in hooks}) == 1
    for hook in hooks:
        Webhook(TEST_WEBHOOK_SECRET).verify(hook.body, hook.headers)
    run = wait_for(lambda: _delivered(jobs, run_id), 10, "the delivery to be recorded")
    assert run["webhook"] == {"status": "delivered", "attempts": 3}
    assert run["status"] == "completed"  # webhook trouble never changes the run's own status


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "ftp://example.com/",
        "not a url",
    ],
)
def test_webhooks_to_private_addresses_are_refused_at_submit(url):
    with serving(APPS / "jobs") as served, served.client() as client:
        response = client.post(
            f"{served.base}/add", params={"async": "true", "webhookEndpoint": url}, json={"a": 1, "b": 1}
        )
        listed = client.get(f"{served.base}/runs").json()["runs"]
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "webhook_refused"
    assert listed == []


def test_idempotency_key_returns_the_same_run_without_running_again(jobs, tmp_path: Path):
    marker = tmp_path / "count"
    headers = {"idempotency-key": "order-42"}
    first = submit(jobs, "count", {"marker": str(marker)}, headers=headers).json()["run_id"]
    poll_until_done(jobs, first)
    second = submit(jobs, "count", {"marker": str(marker)}, headers=headers)
    assert second.json()["run_id"] == first
    assert marker.read_text() == "ran\n"
    conflict = submit(jobs, "count", {"marker": str(tmp_path / "other")}, headers=headers)
    assert conflict.status_code == 422
    assert conflict.json()["error"]["code"] == "idempotency_conflict"


def test_cancel_a_pending_run_means_it_never_starts(jobs, tmp_path: Path):
    blockers = [submit(jobs, "asleep", {"seconds": 1.5}).json()["run_id"] for _ in range(2)]
    marker = tmp_path / "ran"
    waiting = submit(jobs, "sleep", {"seconds": 0, "marker": str(marker)}).json()["run_id"]
    with jobs.client() as client:
        response = client.delete(f"{jobs.base}/runs/{waiting}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    for run_id in blockers:
        poll_until_done(jobs, run_id)
    time.sleep(0.3)
    assert not marker.exists()
    assert poll_until_done(jobs, waiting)["status"] == "cancelled"


def test_cancel_a_running_async_run_raises_cancelled_error_inside_it(jobs, tmp_path: Path):
    marker = tmp_path / "cancelled"
    run_id = submit(jobs, "asleep", {"seconds": 10, "marker": str(marker)}).json()["run_id"]
    wait_for(lambda: _status(jobs, run_id) == "processing", 10, "the run to start")
    with jobs.client() as client:
        assert client.delete(f"{jobs.base}/runs/{run_id}").status_code == 200
    wait_for(marker.exists, 5, "CancelledError inside the function")
    assert poll_until_done(jobs, run_id)["status"] == "cancelled"


def test_cancel_a_running_sync_run_discards_its_late_result(jobs, tmp_path: Path):
    marker = tmp_path / "finished"
    run_id = submit(jobs, "sleep", {"seconds": 0.6, "marker": str(marker)}).json()["run_id"]
    wait_for(lambda: _status(jobs, run_id) == "processing", 10, "the run to start")
    with jobs.client() as client:
        assert client.delete(f"{jobs.base}/runs/{run_id}").status_code == 200
    wait_for(marker.exists, 5, "the thread to finish anyway")
    time.sleep(0.2)
    run = poll_until_done(jobs, run_id)
    assert run["status"] == "cancelled"
    assert "result" not in run


def test_cancel_a_finished_run_is_409(jobs):
    run_id = submit(jobs, "add", {"a": 1, "b": 1}).json()["run_id"]
    poll_until_done(jobs, run_id)
    with jobs.client() as client:
        response = client.delete(f"{jobs.base}/runs/{run_id}")
    assert response.status_code == 409
    assert response.json()["error"]["message"] == (
        f"Run '{run_id}' already ended (completed); there is nothing to cancel."
    )


def _status(served, run_id: str) -> str:
    with served.client() as client:
        status: str = client.get(f"{served.base}/runs/{run_id}").json()["status"]
        return status


def test_too_many_pending_runs_is_429(tmp_path: Path):
    with serving(APPS / "jobs", max_queue=2) as served:
        statuses = [submit(served, "asleep", {"seconds": 2}).status_code for _ in range(6)]
        rejected = submit(served, "asleep", {"seconds": 2})
    # two start at once (replica_concurrency = 2), two wait in the queue, the rest are refused
    assert statuses[:4] == [202] * 4
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "1"


def test_list_runs_newest_first_with_filters(jobs):
    ids = [submit(jobs, "add", {"a": i, "b": 0}).json()["run_id"] for i in range(3)]
    failed = submit(jobs, "fail").json()["run_id"]
    for run_id in [*ids, failed]:
        poll_until_done(jobs, run_id)
    with jobs.client() as client:
        everything = client.get(f"{jobs.base}/runs").json()
        first_page = client.get(f"{jobs.base}/runs", params={"function": "add", "limit": 2}).json()
        second_page = client.get(
            f"{jobs.base}/runs", params={"function": "add", "limit": 2, "cursor": first_page["next_cursor"]}
        ).json()
        only_failed = client.get(f"{jobs.base}/runs", params={"status": "failed"}).json()
    assert [run["run_id"] for run in everything["runs"]] == [failed, *reversed(ids)]
    assert [run["run_id"] for run in first_page["runs"] + second_page["runs"]] == list(reversed(ids))
    assert second_page["next_cursor"] is None
    assert [run["run_id"] for run in only_failed["runs"]] == [failed]


def test_generator_run_replays_its_events_with_ids_and_resumes(jobs):
    run_id = submit(jobs, "tokens", {"n": 5}).json()["run_id"]
    run = poll_until_done(jobs, run_id)
    assert run["result"] == [{"token": i} for i in range(5)]
    with jobs.client() as client:
        everything = client.get(f"{jobs.base}/runs/{run_id}/events").text
        resumed = client.get(f"{jobs.base}/runs/{run_id}/events", headers={"last-event-id": "2"}).text
    assert everything == "".join(f'id: {i}\ndata: {{"token":{i}}}\n\n' for i in range(5))
    assert resumed == 'id: 3\ndata: {"token":3}\n\nid: 4\ndata: {"token":4}\n\n'


def test_events_follow_a_run_that_is_still_going(jobs):
    run_id = submit(jobs, "tokens", {"n": 6, "delay": 0.15}).json()["run_id"]
    with jobs.client() as client, client.stream("GET", f"{jobs.base}/runs/{run_id}/events") as response:
        lines = [line for line in response.iter_lines() if line.startswith("id:")]
    assert lines == [f"id: {i}" for i in range(6)]


def test_sync_generator_run_records_its_chunks(jobs):
    run_id = submit(jobs, "words", {"text": "x y"}).json()["run_id"]
    assert poll_until_done(jobs, run_id)["result"] == ["x", "y"]
    with jobs.client() as client:
        assert client.get(f"{jobs.base}/runs/{run_id}/events").text == "id: 0\ndata: x\n\nid: 1\ndata: y\n\n"


def test_async_run_past_response_grace_period_fails_with_timeout():
    with serving(APPS / "slow") as served:  # response_grace_period = 1
        run_id = submit(served, "asleep", {"seconds": 5}).json()["run_id"]
        run = poll_until_done(served, run_id)
    assert run["status"] == "failed"
    assert run["error"] == {
        "type": "Timeout",
        "message": "asleep() did not finish within response_grace_period (1 s).",
    }


def test_async_runs_share_the_concurrency_limit_with_sync_calls(jobs):
    # replica_concurrency = 2: two long async runs hold both slots, so a sync call waits for one
    for _ in range(2):
        submit(jobs, "asleep", {"seconds": 1})
    time.sleep(0.3)
    with jobs.client() as client:
        started = time.monotonic()
        response = client.post(f"{jobs.base}/add", json={"a": 1, "b": 1})
        waited = time.monotonic() - started
    assert response.status_code == 200
    assert waited > 0.4


def test_sync_calls_with_a_webhook_run_every_time_even_with_an_idempotency_key(jobs, webhook_receiver):
    headers = {"idempotency-key": "same"}
    with jobs.client() as client:
        url = f"{jobs.base}/add?webhookEndpoint={webhook_receiver.url}"
        first = client.post(url, json={"a": 1, "b": 1}, headers=headers)
        second = client.post(url, json={"a": 1, "b": 1}, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["run_id"] != second.json()["run_id"]
    assert len(webhook_receiver.wait_for(2)) == 2


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("PUT", "runs", "GET"), ("POST", "runs/r1", "GET, DELETE"), ("DELETE", "runs/r1/events", "GET")],
)
def test_a_wrong_method_on_a_runs_route_is_405_naming_the_allowed_ones(jobs, method, path, allow):
    with jobs.client() as client:
        response = client.request(method, f"{jobs.base}/{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {
        "error": {
            "code": "method_not_allowed",
            "message": f"Use {allow} on {jobs.state.base_path}/{path}; got {method}.",
        }
    }


def test_an_unknown_path_under_runs_is_404(jobs):
    with jobs.client() as client:
        response = client.get(f"{jobs.base}/runs/r1/other")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
