"""GET /metrics: Prometheus text about calls, latency, the gate, runs, webhooks and streams."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import APPS, Served, WebhookReceiver, serving, wait_for

SSE = {"accept": "text/event-stream"}


@pytest.fixture
def jobs() -> Iterator[Served]:
    with serving(APPS / "jobs", webhook_allow_cidrs="127.0.0.0/8") as served:
        yield served


def scrape(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape, parsed as Prometheus would."""
    response = httpx.get(served.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests_total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], **labels: str) -> float:
    return samples.get(("cortex_requests_total", tuple(sorted(labels.items()))), 0.0)


def test_calls_are_counted_by_function_kind_and_status(jobs: Served) -> None:
    with jobs.client() as client:
        for _ in range(2):
            assert client.post(f"{jobs.base}/add", json={"a": 1, "b": 2}).status_code == 200
        assert client.post(f"{jobs.base}/add", json={"a": "x", "b": 2}).status_code == 422
        assert client.post(f"{jobs.base}/fail", json={}).status_code == 500
        assert client.post(f"{jobs.base}/nope", json={}).status_code == 404
        stream = client.post(f"{jobs.base}/words", json={"text": "a b c d"}, headers=SSE)
        assert stream.status_code == 200 and stream.text.count("data:") == 4
    samples = scrape(jobs)
    assert requests_total(samples, function="add", kind="call", status="200") == 2
    assert requests_total(samples, function="add", kind="call", status="422") == 1
    assert requests_total(samples, function="fail", kind="call", status="500") == 1
    assert requests_total(samples, function="", kind="call", status="404") == 1  # no name from the URL
    assert requests_total(samples, function="words", kind="stream", status="200") == 1
    assert samples[("cortex_stream_chunks_total", (("function", "words"),))] == 4
    assert samples[("cortex_request_duration_seconds_count", (("function", "add"),))] == 3
    assert samples[("cortex_request_duration_seconds_sum", (("function", "add"),))] > 0
    inf = ("cortex_request_duration_seconds_bucket", (("function", "fail"), ("le", "+Inf")))
    assert samples[inf] == 1
    names = {dict(labels).get("function") for name, labels in samples if name == "cortex_requests_total"}
    assert "nope" not in names


def test_gate_gauges_show_calls_in_flight_and_queued(jobs: Served) -> None:
    samples = scrape(jobs)
    assert samples[("cortex_calls_in_flight", ())] == 0
    assert samples[("cortex_calls_queued", ())] == 0
    gate = jobs.state.gate
    gate.active = 1  # as a running call would leave it; read at scrape time
    try:
        assert scrape(jobs)[("cortex_calls_in_flight", ())] == 1
    finally:
        gate.active = 0
    assert samples[("cortex_concurrency_limit", ())] == gate.limit


def test_runs_by_status_come_from_the_store(jobs: Served) -> None:
    with jobs.client() as client:
        ok = client.post(f"{jobs.base}/add?async=true", json={"a": 1, "b": 1})
        bad = client.post(f"{jobs.base}/fail?async=true", json={})
        assert ok.status_code == bad.status_code == 202

        def finished() -> bool:
            polls = [client.get(f"{jobs.base}/runs/{r.json()['run_id']}") for r in (ok, bad)]
            statuses = {poll.json()["status"] for poll in polls}
            return statuses == {"completed", "failed"}

        wait_for(finished, 15, "both runs to finish")
    samples = scrape(jobs)
    assert samples[("cortex_runs", (("status", "completed"),))] == 1
    assert samples[("cortex_runs", (("status", "failed"),))] == 1
    assert samples[("cortex_runs", (("status", "pending"),))] == 0
    assert requests_total(samples, function="add", kind="async", status="202") == 1


def test_webhook_deliveries_are_counted_by_outcome(jobs: Served, webhook_receiver: WebhookReceiver) -> None:
    with jobs.client() as client:
        url = f"{jobs.base}/add?webhookEndpoint={webhook_receiver.url}"
        assert client.post(url, json={"a": 1, "b": 2}).status_code == 200
    webhook_receiver.wait_for(1)
    key = ("cortex_webhook_deliveries_total", (("outcome", "delivered"),))
    wait_for(lambda: scrape(jobs).get(key) == 1, 10, "the delivery to be counted")
    assert scrape(jobs)[("cortex_webhook_deliveries_total", (("outcome", "failed"),))] == 0


def test_servers_in_one_process_keep_their_own_metrics(jobs: Served) -> None:
    with serving(APPS / "jobs") as other:
        assert httpx.post(f"{other.base}/add", json={"a": 1, "b": 2}).status_code == 200
        assert requests_total(scrape(other), function="add", kind="call", status="200") == 1
    assert requests_total(scrape(jobs), function="add", kind="call", status="200") == 0
