"""The proxy's two lanes: plain calls answered below ASGI (fast_lane.py) and the rest through
ProxyRoutes. Both must look the same to the client and to the app; the connection must keep
working whichever lane each of its requests took."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Served, serving, wait_for
from tests.custom_apps import custom_app_copy

# Headers that differ between any two responses, whatever the lane.
_VARYING = {"date", "x-request-id", "content-length", "transfer-encoding"}


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    app_dir = custom_app_copy(tmp_path_factory.mktemp("lanes"))
    with serving(app_dir) as served:
        wait_for(lambda: served.state.is_ready, timeout=30, what="the app's server to be ready")
        yield served


def _raw_exchange(served: Served, payload: bytes, until: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on one connection; read until `until` has appeared as often as asked."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        received = b""
        deadline = time.monotonic() + timeout
        while until not in received and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _request(served: Served, method: str, path: str, body: bytes = b"", extra: bytes = b"") -> bytes:
    target = served.base.removeprefix(served.url) + path
    host = served.url.removeprefix("http://").encode()
    return (
        f"{method} {target} HTTP/1.1\r\n".encode()
        + b"host: "
        + host
        + b"\r\ncontent-type: application/json\r\n"
        + extra
        + (b"content-length: %d\r\n" % len(body) if body or method == "POST" else b"")
        + b"\r\n"
        + body
    )


def test_both_lanes_forward_the_same_request_and_answer_the_same(proxied: Served) -> None:
    url = f"{proxied.base}/anything/same?q=1"
    direct = httpx.post(url, content=b'{"a": 1}', headers={"x-custom": "v"})

    def streamed() -> Iterator[bytes]:
        yield b'{"a": 1}'  # no length known up front: chunked, so the ASGI lane takes it

    routed = httpx.post(url, content=streamed(), headers={"x-custom": "v"})
    assert direct.status_code == routed.status_code == 200
    seen_direct, seen_routed = direct.json(), routed.json()
    assert seen_direct["headers"]["x-request-id"] == direct.headers["x-request-id"]
    assert seen_routed["headers"]["x-request-id"] == routed.headers["x-request-id"]
    for seen in (seen_direct, seen_routed):
        for name in ("x-request-id", "content-length", "transfer-encoding"):
            seen["headers"].pop(name, None)
    assert seen_direct == seen_routed  # the app cannot tell the lanes apart
    assert {k: v for k, v in direct.headers.items() if k not in _VARYING} == {
        k: v for k, v in routed.headers.items() if k not in _VARYING
    }


def test_one_keep_alive_connection_serves_many_calls(proxied: Served) -> None:
    with httpx.Client() as client:
        ids = set()
        for i in range(200):
            response = client.post(f"{proxied.base}/predict", json={"i": i})
            assert response.status_code == 200
            assert response.json()["echo"] == {"i": i}
            ids.add(response.headers["x-request-id"])
    assert len(ids) == 200
    assert proxied.state.gate.active == 0  # every slot given back


def test_pipelined_requests_answer_in_order_across_lanes(proxied: Served) -> None:
    # a plain call (direct lane), a HEAD (ASGI lane), then a plain call again, in one write
    payload = (
        _request(proxied, "POST", "/predict", b'{"n": 1}')
        + _request(proxied, "HEAD", "/anything/h")
        + _request(proxied, "POST", "/predict", b'{"n": 3}', extra=b"connection: close\r\n")
    )
    received = _raw_exchange(proxied, payload, until=b'"n":3')
    assert received.count(b"HTTP/1.1 200 OK") == 3, received[:2000]
    first, third = received.find(b'"n":1'), received.find(b'"n":3')
    assert 0 < first < third


def test_http_10_and_expect_continue_take_the_asgi_lane_and_work(proxied: Served) -> None:
    old = _raw_exchange(
        proxied,
        _request(proxied, "POST", "/predict", b'{"v": 10}').replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        until=b'"v":10',
    )
    assert old.startswith(b"HTTP/1.1 200"), old[:300]
    assert b'"echo":{"v":10}' in old
    response = httpx.post(f"{proxied.base}/predict", json={"e": 1}, headers={"expect": "100-continue"})
    assert response.status_code == 200
    assert response.json()["echo"] == {"e": 1}
    assert (
        "expect"
        not in httpx.post(f"{proxied.base}/anything/x", headers={"expect": "100-continue"}).json()["headers"]
    )


@pytest.mark.parametrize("sized", [True, False])
def test_downloads_arrive_whole_and_the_connection_is_reused(proxied: Served, sized: bool) -> None:
    query = "mb=8&sized=1" if sized else "mb=8"
    with httpx.Client() as client:
        for _ in range(2):  # the second one on the pooled upstream connection the first used
            digest = hashlib.sha256()
            size = 0
            with client.stream("GET", f"{proxied.base}/download?{query}") as response:
                assert response.status_code == 200
                assert ("content-length" in response.headers) is sized
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
            assert size == 8 * 1024 * 1024
            assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
        assert client.post(f"{proxied.base}/predict", json={"after": True}).json()["echo"] == {"after": True}


def test_a_client_leaving_a_stream_gives_its_slot_back(proxied: Served) -> None:
    with httpx.stream("GET", f"{proxied.base}/stream?n=50&delay=0.1") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # one event, then the client goes
    wait_for(lambda: proxied.state.gate.active == 0, 5, "the stream's slot to be released")
    assert httpx.post(f"{proxied.base}/predict", json={}).status_code == 200


def test_many_concurrent_calls_each_get_their_own_answer(proxied: Served) -> None:
    errors: list[str] = []

    def caller(worker: int) -> None:
        with httpx.Client() as client:
            for i in range(25):
                body = {"w": worker, "i": i}
                response = client.post(f"{proxied.base}/predict", json=body)
                if response.status_code != 200 or response.json()["echo"] != body:
                    errors.append(f"{worker}/{i}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_an_app_slower_than_the_grace_period_gets_504(tmp_path: Path) -> None:
    with serving(custom_app_copy(tmp_path, response_grace_period=1), wait_ready=False) as served:
        wait_for(lambda: served.state.is_ready, 30, "the app's server")
        started = time.monotonic()
        response = httpx.get(f"{served.base}/slow?seconds=4", timeout=10)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "gateway_timeout"
        assert response.headers["x-request-id"]
        assert time.monotonic() - started < 3.5
        assert httpx.post(f"{served.base}/predict", json={"ok": 1}).status_code == 200


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_large_sized_download_to_a_slow_client_arrives_whole(proxied: Served) -> None:
    # 16 MiB read in small pieces with pauses: the client's socket fills, so the relay (splice
    # on Linux) must wait for room again and again
    before = _open_fds()
    digest, size = hashlib.sha256(), 0
    with httpx.stream("GET", f"{proxied.base}/download?mb=16&sized=1") as response:
        assert response.headers["content-length"] == str(16 * 1024 * 1024)
        for i, chunk in enumerate(response.iter_bytes(chunk_size=256 * 1024)):
            digest.update(chunk)
            size += len(chunk)
            if i % 8 == 0:
                time.sleep(0.02)
    assert size == 16 * 1024 * 1024
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
    wait_for(lambda: _open_fds() <= before + 2, 5, "the relay's pipe and descriptors to be closed")


def test_a_client_leaving_a_large_download_frees_everything(proxied: Served) -> None:
    before = _open_fds()
    with httpx.stream("GET", f"{proxied.base}/download?mb=256&sized=1") as response:
        assert response.status_code == 200
        next(response.iter_bytes(chunk_size=1024 * 1024))  # 1 MiB of 256, then the client goes
    wait_for(lambda: proxied.state.gate.active == 0, 10, "the download's slot to be released")
    wait_for(lambda: _open_fds() <= before + 2, 10, "the relay's pipe and descriptors to be closed")
    assert httpx.get(f"{proxied.base}/download?mb=2&sized=1").content == b"x" * 2 * 1024 * 1024


@pytest.mark.parametrize("streamed", [False, True])
def test_a_proxied_answer_has_one_date_and_one_server_header(proxied: Served, streamed: bool) -> None:
    def body() -> Iterator[bytes]:
        yield b"{}"

    content = body() if streamed else b"{}"  # streamed: the ASGI lane
    response = httpx.post(f"{proxied.base}/anything/x", content=content)
    assert response.status_code == 200
    names = [name.lower() for name, _ in response.headers.raw]
    assert names.count(b"date") == 1 and names.count(b"server") == 1, names
    assert names.count(b"x-request-id") == 1
