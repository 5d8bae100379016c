"""Webhook delivery to a real receiver on loopback: signatures, retries, redirects, timeouts."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex.jobs.models import Delivery, Outcome, RunRequest, RunStatus, WebhookStatus
from cortex.jobs.sqlite_store import SQLiteJobStore
from cortex.jobs.webhooks import DeliveryResult, WebhookDispatcher, deliver, new_client, next_attempt
from tests.conftest import wait_for

SECRET = "whsec_" + base64.b64encode(b"e2e-secret-key-of-32-bytes-long!").decode()
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records every request and answers with the queued replies, then 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.in_flight = 0
        self.most_in_flight = 0
        self.closing = False
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST", "GET"])])

    async def handle(self, request: Request) -> Response:
        self.requests.append(Received(request.url.path, dict(request.headers), await request.body()))
        reply = self.replies.popleft() if self.replies else Reply()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            deadline = time.monotonic() + reply.delay
            while time.monotonic() < deadline and not self.closing:  # shutdown need not wait
                await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        return Response(status_code=reply.status, headers=reply.headers)


@contextmanager
def receiving(**tls: Any) -> Iterator[tuple[str, Receiver]]:
    """A Receiver on 127.0.0.1 (https when given ssl_certfile and ssl_keyfile)."""
    receiver = Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # kernel-chosen port: parallel tests never collide
    server = uvicorn.Server(uvicorn.Config(receiver.app, log_level="warning", lifespan="off", **tls))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), timeout=10, what="receiver startup")
    assert server.started, "receiver exited during startup; see the log above"
    try:
        scheme = "https" if tls else "http"
        yield f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", receiver
    finally:
        receiver.closing = True
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def receiver() -> Iterator[tuple[str, Receiver]]:
    with receiving() as served:
        yield served


class Clock:
    """Starts at the real time (receivers reject signatures older than five minutes), then
    only moves when a test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def payload(run_id: str = "run-1") -> bytes:
    return json.dumps({"run_id": run_id, "status": "completed", "result": {"ok": True}}).encode()


def a_delivery(url: str, cerebrium_secret: str | None = None) -> Delivery:
    return Delivery(f"msg_{uuid.uuid4().hex}", "run-1", url, payload(), cerebrium_secret=cerebrium_secret)


def attempt(delivery: Delivery, allow: Sequence[Any] = LOOPBACK, **kwargs: Any) -> Any:
    async def main() -> Any:
        async with new_client() as client:
            return await deliver(client, delivery, SECRET, time.time(), allow, **kwargs)

    return asyncio.run(main())


# -- One attempt ------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifies(receiver):
    url, got = receiver
    delivery = a_delivery(f"{url}/hooks/done?source=cortex")
    result = attempt(delivery)
    assert result.delivered and result.status == 200
    [request] = got.requests
    assert request.path == "/hooks/done"
    assert request.body == delivery.payload
    assert Webhook(SECRET).verify(request.body, request.headers) == json.loads(delivery.payload)
    assert request.headers["webhook-id"] == delivery.delivery_id
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("cortex-webhooks/")
    assert "x-cerebrium-webhook-signature" not in request.headers


def test_cerebrium_signature_is_sent_when_the_run_carried_one(receiver):
    url, got = receiver
    attempt(a_delivery(url, cerebrium_secret="cerebrium-s3cret"))
    [request] = got.requests
    timestamp = request.headers["x-cerebrium-webhook-timestamp"]
    signed = f"run-1.{timestamp}.".encode() + request.body
    digest = hmac.new(b"cerebrium-s3cret", signed, hashlib.sha256).hexdigest()
    assert request.headers["x-cerebrium-webhook-signature"] == f"v1,{digest}"
    assert request.headers["x-request-id"] == "run-1"
    assert abs(int(timestamp) - time.time()) < 60
    Webhook(SECRET).verify(request.body, request.headers)


def test_connection_goes_to_the_checked_address_with_the_original_host(receiver):
    url, got = receiver
    port = url.rsplit(":", 1)[1]

    async def resolve(host: str, port: int) -> Sequence[str]:
        assert host == "hooks.example.test"
        return ["127.0.0.1"]

    result = attempt(a_delivery(f"http://hooks.example.test:{port}/in"), resolve=resolve)
    assert result.delivered
    assert got.requests[0].headers["host"] == f"hooks.example.test:{port}"


def test_tls_verifies_the_host_name_while_connecting_to_the_checked_address(tmp_path):
    # The certificate names hooks.example.test only (no IP), so the handshake with 127.0.0.1
    # succeeds only if SNI and verification use the host name from the URL.
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=hooks.example.test", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:hooks.example.test"],
        check=True, capture_output=True,
    )  # fmt: skip

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    async def main(url: str) -> tuple[DeliveryResult, DeliveryResult]:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trusting, trust_env=False) as client:
            port = url.rsplit(":", 1)[1]
            send = functools.partial(deliver, client, secret=SECRET, now=time.time(), allow=LOOPBACK)
            right = await send(a_delivery(f"https://hooks.example.test:{port}/tls"), resolve=resolve)
            wrong = await send(a_delivery(f"https://other.example.test:{port}/tls"), resolve=resolve)
            return right, wrong

    with receiving(ssl_certfile=str(cert), ssl_keyfile=str(key)) as (url, got):
        right, wrong = asyncio.run(main(url))
    assert right.delivered, right
    assert got.requests[0].path == "/tls"
    assert got.requests[0].headers["host"] == f"hooks.example.test:{url.rsplit(':', 1)[1]}"
    assert wrong.status is None and "CERTIFICATE_VERIFY_FAILED" in (wrong.error or "")
    assert len(got.requests) == 1


def test_a_host_that_now_resolves_to_a_private_address_is_not_contacted(receiver):
    # DNS rebinding: the name was public when the run was submitted, loopback at delivery.
    url, got = receiver
    port = url.rsplit(":", 1)[1]

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    result = attempt(a_delivery(f"http://rebind.example.test:{port}/"), allow=(), resolve=resolve)
    assert not result.delivered and result.status is None
    assert result.error == (
        f"refused: webhook URL 'http://rebind.example.test:{port}/' points at 127.0.0.1, a loopback "
        "address; webhooks may only target public addresses. To allow it, add its network to "
        "CORTEX_WEBHOOK_ALLOW_CIDRS (e.g. 127.0.0.1/32)."
    )
    assert got.requests == []


def test_a_redirect_is_not_followed_and_counts_as_a_failure(receiver):
    url, got = receiver
    got.replies.append(Reply(302, {"location": f"{url}/elsewhere"}))
    result = attempt(a_delivery(f"{url}/hook"))
    assert result.status == 302 and not result.delivered
    assert result.describe() == "HTTP 302 (redirects are not followed)"
    assert [r.path for r in got.requests] == ["/hook"]
    assert next_attempt(1, (5.0,), 100.0, result.status, result.retry_after) == 105.0


def test_a_timeout_counts_as_a_failure(receiver):
    url, got = receiver
    got.replies.append(Reply(200, delay=3))
    started = time.monotonic()
    result = attempt(a_delivery(url), timeout=0.2)
    assert time.monotonic() - started < 2
    assert (result.status, result.error, result.delivered) == (None, "timed out after 0.2 s", False)
    assert next_attempt(1, (5.0,), 100.0, result.status, result.retry_after) == 105.0


def test_a_closed_port_counts_as_a_failure():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    result = attempt(a_delivery(f"http://127.0.0.1:{port}/"))
    assert result.status is None and result.error.startswith("ConnectError: ")
    assert next_attempt(1, (5.0,), 100.0, result.status, result.retry_after) == 105.0


def test_retry_after_is_honoured(receiver):
    url, got = receiver
    got.replies.append(Reply(503, {"retry-after": "30"}))
    result = attempt(a_delivery(url))
    assert (result.status, result.retry_after) == (503, "30")
    assert next_attempt(1, (1.0, 60.0), 100.0, result.status, result.retry_after) == 130.0


def test_410_gone_stops_retries(receiver):
    url, got = receiver
    got.replies.append(Reply(410))
    result = attempt(a_delivery(url))
    assert result.status == 410
    assert next_attempt(1, (1.0, 60.0), 100.0, result.status, result.retry_after) is None


# -- The dispatcher, with the SQLite store ----------------------------------------------------


def with_store(tmp_path: Path, test: Callable[[SQLiteJobStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = SQLiteJobStore(tmp_path / "runs.db", "p-test/app")
        await store.open()
        try:
            await test(store)
        finally:
            await store.close()

    asyncio.run(main())


async def finished_run(store: SQLiteJobStore, webhook_url: str, now: float) -> str:
    """A completed run whose webhook is queued, as a sync call with a webhook leaves it."""
    run_id = str(uuid.uuid4())
    request = RunRequest(run_id, "predict", b"{}", now, 3600, webhook_url=webhook_url)
    await store.record_finished(request, Outcome(RunStatus.COMPLETED, 1.0, b'{"ok":true}'), now)
    return run_id


async def webhook_of(store: SQLiteJobStore, run_id: str) -> tuple[RunStatus, WebhookStatus | None, int]:
    run = await store.get(run_id)
    assert run is not None
    return run.status, run.webhook_status, run.webhook_attempts


def test_dispatcher_retries_on_the_schedule_until_delivered(tmp_path, receiver):
    url, got = receiver
    got.replies.extend([Reply(500), Reply(500)])
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        run_id = await finished_run(store, f"{url}/hook", clock.now)
        dispatcher = WebhookDispatcher(store, SECRET, (0.05, 0.05, 0.05), LOOPBACK, clock)
        try:
            assert await dispatcher.run_once() == 1
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.PENDING, 1)
            clock.now += 0.04
            assert await dispatcher.run_once() == 0  # not due yet
            clock.now += 1.0  # a second later, so the next attempt's timestamp differs
            assert await dispatcher.run_once() == 1
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.PENDING, 2)
            clock.now += 1.0
            assert await dispatcher.run_once() == 1
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.DELIVERED, 3)
            clock.now += 3600
            assert await dispatcher.run_once() == 0
        finally:
            await dispatcher.aclose()

    with_store(tmp_path, test)
    assert len(got.requests) == 3
    assert len({r.headers["webhook-id"] for r in got.requests}) == 1  # constant across attempts
    timestamps = [int(r.headers["webhook-timestamp"]) for r in got.requests]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 3
    for request in got.requests:
        Webhook(SECRET).verify(request.body, request.headers)


def test_dispatcher_gives_up_when_the_schedule_is_used_up(tmp_path, receiver):
    url, got = receiver
    got.replies.extend([Reply(500), Reply(502)])
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        run_id = await finished_run(store, url, clock.now)
        dispatcher = WebhookDispatcher(store, SECRET, (0.05,), LOOPBACK, clock)
        try:
            assert await dispatcher.run_once() == 1
            clock.now += 0.05
            assert await dispatcher.run_once() == 1
            # The run itself stays completed: a webhook that fails is the webhook's problem only.
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.FAILED, 2)
            clock.now += 3600
            assert await dispatcher.run_once() == 0
        finally:
            await dispatcher.aclose()

    with_store(tmp_path, test)
    assert len(got.requests) == 2


def test_dispatcher_stops_at_410_gone(tmp_path, receiver):
    url, got = receiver
    got.replies.append(Reply(410))
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        run_id = await finished_run(store, url, clock.now)
        dispatcher = WebhookDispatcher(store, SECRET, (0.05, 0.05), LOOPBACK, clock)
        try:
            assert await dispatcher.run_once() == 1
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.FAILED, 1)
            clock.now += 3600
            assert await dispatcher.run_once() == 0
        finally:
            await dispatcher.aclose()

    with_store(tmp_path, test)
    assert len(got.requests) == 1


def test_dispatcher_waits_as_long_as_retry_after_asks(tmp_path, receiver):
    url, got = receiver
    got.replies.append(Reply(429, {"retry-after": "30"}))
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        run_id = await finished_run(store, url, clock.now)
        dispatcher = WebhookDispatcher(store, SECRET, (0.05, 120), LOOPBACK, clock)
        try:
            assert await dispatcher.run_once() == 1
            clock.now += 29.9
            assert await dispatcher.run_once() == 0  # the schedule alone would have retried by now
            clock.now += 0.1
            assert await dispatcher.run_once() == 1
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.DELIVERED, 2)
        finally:
            await dispatcher.aclose()

    with_store(tmp_path, test)


def test_dispatcher_records_a_redirect_and_a_timeout_as_failures(tmp_path, receiver, caplog):
    url, got = receiver
    got.replies.extend([Reply(301, {"location": "https://example.com/"}), Reply(200, delay=3)])
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        run_id = await finished_run(store, url, clock.now)
        dispatcher = WebhookDispatcher(store, SECRET, (0.05,), LOOPBACK, clock, timeout=0.2)
        try:
            assert await dispatcher.run_once() == 1
            clock.now += 0.05
            assert await dispatcher.run_once() == 1
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.FAILED, 2)
        finally:
            await dispatcher.aclose()

    with caplog.at_level(logging.WARNING, logger="cortex.webhooks"):
        with_store(tmp_path, test)
    assert len(got.requests) == 2
    assert [record.getMessage().split(": ", 1)[1] for record in caplog.records] == [
        "HTTP 301 (redirects are not followed) (attempt 1); trying again in 0 s",
        "timed out after 0.2 s (attempt 2); giving up",
    ]


def test_dispatcher_sends_concurrently_within_its_bound(tmp_path, receiver):
    url, got = receiver
    got.replies.extend(Reply(200, delay=0.1) for _ in range(6))
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        runs = [await finished_run(store, url, clock.now) for _ in range(6)]
        dispatcher = WebhookDispatcher(store, SECRET, (1,), LOOPBACK, clock, concurrency=2)
        try:
            assert await dispatcher.run_once() == 6
        finally:
            await dispatcher.aclose()
        for run_id in runs:
            assert (await webhook_of(store, run_id))[1] is WebhookStatus.DELIVERED

    with_store(tmp_path, test)
    assert got.most_in_flight == 2


def test_run_forever_is_woken_survives_store_errors_and_stops_when_cancelled(tmp_path, receiver, caplog):
    url, got = receiver
    clock = Clock()

    async def test(store: SQLiteJobStore) -> None:
        dispatcher = WebhookDispatcher(store, SECRET, (0.05,), LOOPBACK, clock)
        task = asyncio.create_task(dispatcher.run_forever(poll_interval=30))
        try:
            await asyncio.sleep(0.05)  # it has looked once and now waits up to 30 s
            first = await finished_run(store, url, clock.now)
            dispatcher.wake()
            await until(lambda: len(got.requests) == 1)
            await delivered(store, first)  # recorded, so closing the store cannot lose the record
            await store.close()  # every store call fails now...
            dispatcher.wake()
            await until(lambda: "claiming deliveries failed" in caplog.text)
            await store.open()  # ... and works again
            second = await finished_run(store, url, clock.now)
            dispatcher.wake()
            await until(lambda: len(got.requests) == 2)
            await delivered(store, second)  # sent, then recorded: cancelling in between loses the record
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await dispatcher.aclose()
        for run_id in (first, second):
            assert await webhook_of(store, run_id) == (RunStatus.COMPLETED, WebhookStatus.DELIVERED, 1)

    with caplog.at_level(logging.ERROR, logger="cortex.webhooks"):
        with_store(tmp_path, test)


async def delivered(store: SQLiteJobStore, run_id: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (await webhook_of(store, run_id))[1] is not WebhookStatus.DELIVERED:
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
