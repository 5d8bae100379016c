"""Slow, silent and oversized clients against a real server: read deadline, 408, 431, keep-alive."""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import httpx
import pytest

from cortex.http_protocol import MAX_HEAD_BYTES
from tests.conftest import APPS, Served, serving

DEADLINE = 2.0  # request_read_timeout of the servers here
EARLY = 0.2  # how much sooner than the deadline a close may be seen (the client's clock starts first)
LATE = 1.0  # ... and how much later


@pytest.fixture(scope="module")
def echo() -> Iterator[Served]:
    with serving(APPS / "echo", request_read_timeout=DEADLINE) as served:
        yield served


@dataclass
class Closed:
    seconds: float  # from the connection opening to the server's close
    received: bytes
    reset: bool = False  # closed by a reset instead of an orderly end of stream

    def response(self) -> Response:
        return Response.parse(self.received)


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
        return cls(int(status_line.split()[1]), headers, body)

    def json(self) -> Any:
        return json.loads(self.body)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def predict(served: Served) -> str:
    return served.base.removeprefix(served.url) + "/predict"


def head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def request(path: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return head(path, len(payload)) + payload


def trickle_until_closed(sock: socket.socket, data: bytes, interval: float, limit: float = 10) -> Closed:
    """Send `data` one byte per `interval` s (none when empty) until the server closes."""
    started = time.monotonic()
    received, sent, next_send = b"", 0, started
    while time.monotonic() - started < limit:
        if sent < len(data) and time.monotonic() >= next_send:
            try:
                sock.send(data[sent : sent + 1])
            except OSError:  # the server has closed: read what it said
                data = b""
            sent, next_send = sent + 1, next_send + interval
        if select.select([sock], [], [], 0.02)[0]:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return Closed(time.monotonic() - started, received, reset=True)
            if not chunk:
                return Closed(time.monotonic() - started, received)
            received += chunk
    raise AssertionError(f"the server kept the connection open for {limit} s")


def read_until_closed(sock: socket.socket, limit: float = 10) -> Closed:
    return trickle_until_closed(sock, b"", 0, limit)


def read_response(stream: BinaryIO) -> Response:
    """One response with a Content-Length, leaving the connection open.

    `stream` is the socket's makefile("rb"), so bytes of a next (pipelined) response are kept.
    """
    lines = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        lines.append(line)
    response = Response.parse(b"".join(lines).rstrip(b"\r\n") + b"\r\n\r\n")
    response.body = stream.read(int(response.headers["content-length"]))
    return response


def assert_closed_at_deadline(closed: Closed, deadline: float = DEADLINE) -> None:
    assert deadline - EARLY <= closed.seconds <= deadline + LATE, closed
    assert not closed.reset, "the server reset the connection instead of closing it"


# The read deadline


def test_connection_that_sends_nothing_is_closed_at_the_deadline(echo):
    with connect(echo.url) as sock:
        closed = read_until_closed(sock)
    assert_closed_at_deadline(closed)
    assert closed.received == b""  # nothing was asked, so nothing is answered


def test_headers_sent_one_byte_per_second_get_408_at_the_deadline(echo):
    with connect(echo.url) as sock:
        closed = trickle_until_closed(sock, head(predict(echo), 2), interval=1.0)
    assert_closed_at_deadline(closed)
    response = closed.response()
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "request_timeout",
            "message": (
                "The request was not received within 2 s (CORTEX_REQUEST_READ_TIMEOUT); the connection "
                "is closed. Send the whole request at once, or raise the limit."
            ),
        }
    }


def test_body_trickling_after_complete_headers_is_cut_off_at_the_deadline(echo):
    body = json.dumps({"prompt": "x" * 100}).encode()
    with connect(echo.url) as sock:
        sock.sendall(head(predict(echo), len(body)))
        closed = trickle_until_closed(sock, body, interval=0.5)
    assert_closed_at_deadline(closed)
    # The app was already reading the body: it sees a disconnect and ends without an answer.
    assert closed.received == b""


def test_well_behaved_clients_are_served_quickly_while_slow_ones_hold_connections(echo):
    body = json.dumps({"prompt": "x" * 100}).encode()
    slow: list[tuple[bytes, bytes, float]] = [
        *[(b"", b"", 0.0)] * 4,  # silent
        *[(b"", head(predict(echo), len(body)), 1.0)] * 4,  # slowloris headers
        *[(head(predict(echo), len(body)), body, 0.5)] * 4,  # trickling bodies
    ]
    results: list[Closed] = []
    connected = threading.Barrier(len(slow) + 1)

    def hold(first: bytes, rest: bytes, interval: float) -> None:
        with connect(echo.url) as sock:
            sock.sendall(first)
            connected.wait()
            results.append(trickle_until_closed(sock, rest, interval))

    threads = [threading.Thread(target=hold, args=args) for args in slow]
    for thread in threads:
        thread.start()
    connected.wait()
    started, latencies = time.monotonic(), []
    with echo.client() as client:
        while time.monotonic() - started < DEADLINE - 0.5:  # while every slow connection is open
            sent = time.monotonic()
            response = client.post(f"{echo.base}/predict", json={"prompt": "hi"})
            latencies.append(time.monotonic() - sent)
            assert response.status_code == 200
            assert response.json()["result"] == {"echo": "hi"}
    for thread in threads:
        thread.join(timeout=DEADLINE + 5)
    assert len(latencies) >= 10
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 1.0, latencies
    assert len(results) == len(slow)
    for closed in results:
        assert_closed_at_deadline(closed)


def test_keep_alive_client_making_paced_requests_is_never_cut_off(echo):
    addresses = set()
    started = time.monotonic()
    with echo.client() as client:
        for n in range(8):
            response = client.post(f"{echo.base}/predict", json={"prompt": "k", "n": n})
            assert response.status_code == 200
            assert response.json()["result"] == {"echo": "k" * n}
            addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
            time.sleep(0.4)
    assert time.monotonic() - started > DEADLINE * 1.5  # longer than one deadline: it restarts
    assert len(addresses) == 1  # one connection throughout


def test_deadline_restarts_for_each_request_on_a_keep_alive_connection(echo):
    # Each request arrives in 3 parts 0.4 s apart, the first 0.4 s after the previous response:
    # 1.2 s, inside the deadline, which restarts after every response; together they take longer.
    started = time.monotonic()
    with connect(echo.url) as sock, sock.makefile("rb") as stream:
        for n in range(3):
            raw = request(predict(echo), {"prompt": "r", "n": n})
            for part in (raw[:20], raw[20:-5], raw[-5:]):
                time.sleep(0.4)
                sock.sendall(part)
            response = read_response(stream)
            assert response.status == 200
            assert response.json()["result"] == {"echo": "r" * n}
    assert time.monotonic() - started > DEADLINE * 1.5


def test_body_over_the_limit_gets_413_and_the_connection_is_still_timed(serve):
    with (
        serve("echo", max_body_bytes=100, request_read_timeout=DEADLINE) as served,
        connect(served.url) as sock,
        sock.makefile("rb") as stream,
    ):
        sock.sendall(head(predict(served), 1000) + b"x" * 200)
        response = read_response(stream)  # answered before the body ended
        assert response.status == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        closed = read_until_closed(sock)  # the remaining 800 bytes never come
    assert_closed_at_deadline(closed)


# Keep-alive


def test_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(serve):
    with (
        serve("echo", request_read_timeout=10, keep_alive_timeout=1) as served,
        connect(served.url) as sock,
        sock.makefile("rb") as stream,
    ):
        sock.sendall(request(predict(served), {"prompt": "a"}))
        assert read_response(stream).status == 200
        closed = read_until_closed(sock)
    assert 1 - EARLY <= closed.seconds <= 1 + LATE, closed
    assert closed.received == b""


# Oversized heads


def assert_431(status: int, headers: dict[str, str], body: object) -> None:
    assert status == 431
    assert headers["connection"] == "close"
    assert body == {
        "error": {
            "code": "headers_too_large",
            "message": (
                f"The request line and headers are larger than {MAX_HEAD_BYTES} bytes; the connection is "
                "closed. Send fewer or shorter headers, or move the data into the body."
            ),
        }
    }


def test_one_100_kb_header_gets_431_with_a_json_body(echo):
    with echo.client() as client:
        response = client.post(f"{echo.base}/predict", json={"prompt": "a"}, headers={"x-big": "a" * 100_000})
    assert_431(response.status_code, dict(response.headers), response.json())


def test_many_small_headers_over_64_kib_get_431(echo):
    headers = {f"x-header-{i:04}": "b" * 30 for i in range(3000)}  # ~135 KB, each line ~45 bytes
    with echo.client() as client:
        response = client.post(f"{echo.base}/predict", json={"prompt": "a"}, headers=headers)
    assert_431(response.status_code, dict(response.headers), response.json())


@pytest.mark.parametrize("pieces", [1, 100], ids=["at-once", "in-pieces"])
def test_unfinished_huge_head_gets_431_not_a_reset(echo, pieces):
    # The head never ends: uvicorn would buffer all of it. The client is still sending when the
    # server answers, and must read the 431 rather than a connection reset.
    data = b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 4_000_000
    size = len(data) // pieces + 1
    with connect(echo.url) as sock:
        for start in range(0, len(data), size):
            sock.sendall(data[start : start + size])
        closed = read_until_closed(sock)
    assert not closed.reset
    response = closed.response()
    assert_431(response.status, response.headers, response.json())


def test_head_under_the_limit_and_large_bodies_are_accepted(echo):
    with echo.client() as client:
        near_limit = client.post(
            f"{echo.base}/predict", json={"prompt": "a"}, headers={"x-big": "a" * (MAX_HEAD_BYTES - 2000)}
        )
        big_body = client.post(f"{echo.base}/predict", json={"prompt": "b" * 1_000_000})
    assert near_limit.status_code == 200
    assert big_body.status_code == 200
    assert big_body.json()["result"] == {"echo": "b" * 1_000_000}


def test_pipelined_requests_with_large_bodies_are_not_taken_for_large_heads(echo):
    with connect(echo.url) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"".join(request(predict(echo), {"prompt": c * 200_000}) for c in "xyz"))
        answers = [read_response(stream) for _ in range(3)]
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert [answer.json()["result"] for answer in answers] == [{"echo": c * 200_000} for c in "xyz"]


# `cortex serve` applies the settings


def test_cortex_serve_applies_read_deadline_and_keep_alive_from_the_environment(cortex_process):
    env = {"CORTEX_REQUEST_READ_TIMEOUT": "2", "CORTEX_KEEP_ALIVE_TIMEOUT": "1"}
    server = cortex_process("serve", str(APPS / "echo"), "--port", "0", env=env)
    url = server.wait_ready()
    with connect(url) as sock:
        silent = read_until_closed(sock)
    assert_closed_at_deadline(silent)
    with connect(url) as sock, sock.makefile("rb") as stream:
        sock.sendall(request("/v4/p-local/echo-app/predict", {"prompt": "a"}))
        assert read_response(stream).status == 200
        idle = read_until_closed(sock)
    assert 1 - EARLY <= idle.seconds <= 1 + LATE, idle  # keep-alive (1 s), before the deadline (2 s)
    assert httpx.get(f"{url}/health").status_code == 200
