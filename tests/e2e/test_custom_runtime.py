"""A custom runtime behind cortex: a real Starlette child process, reached through the proxy."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from standardwebhooks import Webhook

from tests.auth_tokens import SECRET, claims, hs256
from tests.conftest import TEST_WEBHOOK_SECRET, Served, serving, wait_for
from tests.custom_apps import custom_app_copy

APP = "custom-asgi"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    app_dir = custom_app_copy(tmp_path_factory.mktemp("custom"))
    with serving(app_dir, webhook_allow_cidrs="127.0.0.0/8") as served:
        wait_for(lambda: served.state.is_ready, timeout=30, what="the app's server to be ready")
        yield served


def test_json_call_reaches_the_app_with_request_id_and_forwarded_headers(proxied: Served) -> None:
    response = httpx.post(f"{proxied.base}/predict?x=1&y=two", json={"prompt": "hi"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["echo"] == {"prompt": "hi"}
    assert body["query"] == {"x": "1", "y": "two"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["forwarded_for"] == "127.0.0.1"
    assert body["forwarded_proto"] == "http"
    assert body["forwarded_host"] == proxied.url.removeprefix("http://")
    port = proxied.state.config.runtime.custom.port  # type: ignore[union-attr]
    assert body["env"] == {"PORT": str(port), "APP_NAME": APP, "PROJECT_ID": "p-local"}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_every_method_status_and_header_passes_through_without_hop_by_hop(
    proxied: Served, method: str
) -> None:
    headers = {
        "x-custom": "yes",
        "connection": "keep-alive, x-hop",
        "x-hop": "must not pass",
        "proxy-authorization": "Basic abc",
        "te": "trailers",
    }
    response = httpx.request(
        method, f"{proxied.base}/anything/deep/path%2Fencoded?status=201", headers=headers, content=b"abc"
    )
    assert response.status_code == 201
    assert response.headers["x-app-header"] == "kept"
    seen = response.json()
    assert seen["method"] == method
    assert seen["path"] == "/anything/deep/path/encoded"
    assert seen["headers"]["x-custom"] == "yes"
    for hop in ("x-hop", "proxy-authorization", "te"):
        assert hop not in seen["headers"], hop
    assert seen["size"] == 3


def test_the_apps_own_errors_pass_through(proxied: Served) -> None:
    response = httpx.post(f"{proxied.base}/fail")
    assert response.status_code == 418
    assert response.json() == {"detail": "the app's own error"}
    missing = httpx.get(f"{proxied.base}/no-such-route")
    assert missing.status_code == 404  # the app's 404, not cortex's
    assert missing.text == "Not Found"


def test_sse_chunks_arrive_before_the_stream_ends(proxied: Served) -> None:
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("GET", f"{proxied.base}/stream?n=4&delay=0.5", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    assert arrivals[0] < 0.5, arrivals  # the first event came while the app was still sleeping
    assert arrivals[-1] - arrivals[0] > 1.2, arrivals  # and the rest as they were made


def test_large_bodies_stream_both_ways(proxied: Served) -> None:
    size = 0
    with httpx.stream("GET", f"{proxied.base}/download?mb=16", timeout=60) as response:
        for chunk in response.iter_bytes():
            size += len(chunk)
    assert size == 16 * 1024 * 1024

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"y" * 65536  # sent chunked: no Content-Length

    uploaded = httpx.post(f"{proxied.base}/upload", content=chunks(), timeout=60)
    assert uploaded.json() == {"received": 64 * 65536}


def test_websocket_echo_text_binary_and_close_code(proxied: Served) -> None:
    url = proxied.base.replace("http://", "ws://") + "/ws"

    async def talk() -> tuple[str, bytes, int | None, str | None]:
        async with websockets.connect(url, subprotocols=["echo.v1"]) as socket:
            await socket.send("hello")
            text = await socket.recv()
            await socket.send(b"\x00\x01")
            data = await socket.recv()
            protocol = socket.subprotocol
            await socket.send("close-4001")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
            return str(text), bytes(data), closed.value.rcvd.code if closed.value.rcvd else None, protocol

    text, data, code, protocol = asyncio.run(talk())
    assert text == "echo:hello"
    assert data == b"echo:\x00\x01"
    assert code == 4001
    assert protocol == "echo.v1"


def test_async_run_through_the_proxy_with_a_signed_webhook(proxied: Served, webhook_receiver) -> None:
    with proxied.client() as client:
        submitted = client.post(
            f"{proxied.base}/predict",
            params={"async": "true", "webhookEndpoint": webhook_receiver.url},
            json={"prompt": "later"},
        )
        assert submitted.status_code == 202, submitted.text
        run_id = submitted.json()["run_id"]
        done = wait_for(
            lambda: (r := client.get(submitted.headers["location"])).status_code == 200 and r, 15, "the run"
        )
    result = done.json()["result"]
    assert result["status_code"] == 200
    assert result["body"]["echo"] == {"prompt": "later"}
    assert result["body"]["request_id"] == run_id
    delivery = wait_for(lambda: webhook_receiver.received, 15, "the webhook")[0]
    payload = Webhook(TEST_WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
    assert json.loads(json.dumps(payload))["run_id"] == run_id


def test_a_proxied_run_keeps_the_apps_query_and_fails_on_a_5xx(proxied: Served) -> None:
    with proxied.client() as client:
        answers = {}
        for status in (201, 404, 500):
            submitted = client.post(f"{proxied.base}/anything/run?async=true&status={status}", json={})
            assert submitted.status_code == 202, submitted.text
            location = submitted.headers["location"]
            answers[status] = wait_for(
                lambda location=location: (r := client.get(location)).status_code != 202 and r, 15, "the run"
            ).json()
    assert answers[201]["status"] == "completed"
    assert answers[201]["result"]["status_code"] == 201
    assert answers[201]["result"]["body"]["path"] == "/anything/run"
    assert answers[404]["result"]["status_code"] == 404  # the app's answer: the run completed
    assert answers[500]["status"] == "failed"
    assert answers[500]["error"]["type"] == "AppServerError"
    assert "The app answered 500 to POST /anything/run?status=500" in answers[500]["error"]["message"]


def test_idempotency_key_applies_to_proxied_runs(proxied: Served) -> None:
    headers = {"idempotency-key": f"proxy-{time.time()}"}
    with proxied.client() as client:
        first = client.post(f"{proxied.base}/predict?async=true", json={"a": 1}, headers=headers)
        second = client.post(f"{proxied.base}/predict?async=true", json={"a": 1}, headers=headers)
    assert first.json()["run_id"] == second.json()["run_id"]


def test_runs_routes_are_cortexs_not_the_apps(proxied: Served) -> None:
    response = httpx.get(f"{proxied.base}/runs")
    assert response.status_code == 200
    assert "runs" in response.json()


def test_slow_readiness_answers_503_until_the_app_is_ready(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("READY_AFTER", "2")
    with serving(custom_app_copy(tmp_path), wait_ready=False) as served:
        wait_for(lambda: httpx.get(f"{served.url}/health").status_code == 200, 10, "liveness")
        not_ready = httpx.post(f"{served.base}/predict", json={})
        assert not_ready.status_code == 503
        assert not_ready.headers["retry-after"] == "5"
        assert not_ready.json()["error"]["code"] == "not_ready"
        assert httpx.get(f"{served.url}/ready").status_code == 503
        wait_for(lambda: httpx.get(f"{served.url}/ready").status_code == 200, 15, "readiness")
        assert httpx.post(f"{served.base}/predict", json={"a": 1}).status_code == 200


def test_replica_concurrency_limits_proxied_calls(tmp_path: Path) -> None:
    app_dir = custom_app_copy(tmp_path, replica_concurrency=1)
    with serving(app_dir, max_queue=0, wait_ready=False) as served:
        wait_for(lambda: served.state.is_ready, 30, "the app's server")
        results: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: results.append(httpx.get(f"{served.base}/slow?seconds=3", timeout=20))
        )
        slow.start()
        wait_for(lambda: served.state.gate.active == 1 or results, 15, "the slow call to be admitted")
        assert not results, results  # still in flight
        refused = httpx.get(f"{served.base}/slow?seconds=0")
        slow.join()
    assert refused.status_code == 429
    assert refused.headers["retry-after"]
    assert results[0].status_code == 200


def test_auth_applies_to_proxied_calls_and_websockets(tmp_path: Path) -> None:
    with serving(
        custom_app_copy(tmp_path), auth=True, jwt_secret=SECRET, project_id="p-auth", wait_ready=False
    ) as s:
        wait_for(lambda: s.state.is_ready, 30, "the app's server")
        token = hs256(claims(aud=None, iss=None))
        assert httpx.post(f"{s.base}/predict", json={}).status_code == 401
        assert (
            httpx.post(f"{s.base}/predict", json={}, headers={"authorization": f"Bearer {token}"}).status_code
            == 200
        )
        url = s.base.replace("http://", "ws://") + "/ws"

        async def refused() -> int:
            with pytest.raises(websockets.InvalidStatus) as caught:
                async with websockets.connect(url):
                    pass
            return caught.value.response.status_code

        async def allowed() -> str:
            async with websockets.connect(url, additional_headers={"authorization": f"Bearer {token}"}) as ws:
                await ws.send("x")
                return str(await ws.recv())

        assert asyncio.run(refused()) == 401
        assert asyncio.run(allowed()) == "echo:x"


def test_a_crashed_app_is_restarted_and_served_again(tmp_path: Path) -> None:
    with serving(custom_app_copy(tmp_path), wait_ready=False) as served:
        wait_for(lambda: served.state.is_ready, 30, "the app's server")
        before = httpx.post(f"{served.base}/predict", json={}).json()["pid"]
        crashed = httpx.post(f"{served.base}/crash", json={})
        assert crashed.status_code == 502
        assert crashed.json()["error"]["code"] == "bad_gateway"

        def answered_by_a_new_process() -> bool:
            response = httpx.post(f"{served.base}/predict", json={})
            return response.status_code == 200 and response.json()["pid"] != before

        wait_for(answered_by_a_new_process, 30, "the restarted app to answer")


def test_function_apps_refuse_websockets(tmp_path: Path) -> None:
    from tests.conftest import APPS

    with serving(APPS / "echo") as served:
        url = served.base.replace("http://", "ws://") + "/predict"

        async def connect() -> int:
            with pytest.raises(websockets.InvalidStatus) as caught:
                async with websockets.connect(url):
                    pass
            return caught.value.response.status_code

        assert asyncio.run(connect()) == 404


def test_proxied_calls_are_counted_in_metrics(proxied: Served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def count(kind: str, status: str) -> float:
        families = text_string_to_metric_families(httpx.get(f"{proxied.url}/metrics").text)
        return sum(
            sample.value
            for family in families
            if family.name == "cortex_requests"
            for sample in family.samples
            if sample.name == "cortex_requests_total"
            and sample.labels == {"function": "<proxied>", "kind": kind, "status": status}
        )

    ok, teapot = count("proxy", "200"), count("proxy", "418")
    assert httpx.post(f"{proxied.base}/predict", json={}).status_code == 200
    assert httpx.post(f"{proxied.base}/fail").status_code == 418
    assert count("proxy", "200") == ok + 1
    assert count("proxy", "418") == teapot + 1
