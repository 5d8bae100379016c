"""Hostile input from an authenticated caller: every answer is a JSON 4xx (or a 2xx), never a 5xx,
never a traceback, and nothing reaches a private network through a webhook."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.auth_tokens import PROJECT, SECRET, claims, hs256
from tests.conftest import APPS, Served, serving


class Canary:
    """A loopback listener that counts connections: no webhook may ever reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serving(APPS / "jobs", auth=True, jwt_secret=SECRET, project_id=PROJECT) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[httpx.Client]:
    token = hs256(claims(aud=None, iss=None))
    with server.client(headers={"authorization": f"Bearer {token}"}) as client:
        yield client


def assert_json_4xx(response: httpx.Response, *statuses: int) -> dict[str, str]:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", response.text
    error: dict[str, str] = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    return error


PRIVATE_WEBHOOKS = [
    "http://127.0.0.1:{port}/hook",
    "http://localhost:{port}/hook",
    "http://127.1:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[0:0:0:0:0:ffff:7f00:1]:{port}/",
    "http://user:pass@127.0.0.1:{port}/",
    "http://0.0.0.0:{port}/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/",
    "http:///nohost",
    "http://" + "a" * 300 + ".test/",
]


def test_webhooks_to_private_networks_are_refused_and_never_connected(server: Served, client: httpx.Client):
    canary = Canary()
    try:
        for template in PRIVATE_WEBHOOKS:
            url = template.format(port=canary.port)
            for params in ({"async": "true", "webhookEndpoint": url}, {"webhookEndpoint": url}):
                response = client.post(f"{server.base}/add", params=params, json={"a": 1, "b": 2})
                error = assert_json_4xx(response, 422)
                assert error["code"] == "webhook_refused", (url, error)
        assert client.get(f"{server.base}/runs").json()["runs"] == []
    finally:
        canary.close()
    assert canary.connections == 0


BODIES: list[tuple[str, bytes]] = [
    ("deeply nested arrays", b"[" * 100_000 + b"]" * 100_000),
    ("deeply nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("invalid utf-8", b'{"a": "\xff\xfe", "b": 1}'),
    ("a lone surrogate", b'{"a": "\\ud800", "b": 1}'),
    ("a nul byte", b'{"a": "\\u0000", "b": 1}'),
    ("a 10,000-digit integer", b'{"a": ' + b"9" * 10_000 + b', "b": 1}'),
    ("NaN", b'{"a": NaN, "b": 1}'),
    ("duplicate keys", b'{"a": 1, "a": "x", "b": 1}'),
    ("a top-level array", b"[1, 2]"),
    ("a top-level string", b'"a"'),
    ("null", b"null"),
    ("whitespace", b"   \n"),
    ("truncated", b'{"a": 1, "b":'),
    ("trailing garbage", b'{"a": 1, "b": 2} trailing'),
    ("a list for an int", b'{"a": [1], "b": 1}'),
    ("many unknown keys", b"{" + b",".join(b'"k%d": 1' % i for i in range(20_000)) + b"}"),
]


@pytest.mark.parametrize(("name", "body"), BODIES, ids=[name for name, _ in BODIES])
def test_hostile_bodies_get_a_json_4xx(server: Served, client: httpx.Client, name: str, body: bytes):
    for path in (f"{server.base}/add", f"{server.base}/add?async=true"):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert_json_4xx(response, 400, 422)


@pytest.mark.parametrize(
    "path",
    [
        "/v4/{p}/jobs/../../../etc/passwd",
        "/v4/{p}/jobs/%2e%2e/%2e%2e/etc/passwd",
        "/v4/{p}/jobs/add%00",
        "/v4/{p}/jobs/" + "x" * 8000,
        "/v4/{p}/jobs/\u00e9\u00e8",
        "/v4/{p}/jobs/runs/not-a-uuid",
        "/v4/{p}/jobs/runs/" + "1" * 5000 + "/events",
        "/v4//jobs/add",
        "/v4/{p}//add",
    ],
)
def test_hostile_paths_get_a_json_4xx(server: Served, client: httpx.Client, path: str):
    for method in ("GET", "POST", "DELETE"):
        response = client.request(method, path.format(p=PROJECT), json={"a": 1, "b": 1})
        assert_json_4xx(response, 400, 404, 405, 422)


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"async": "maybe"}, {}),
        ({"async": ["true", "false"]}, {}),
        ({"webhookEndpoint": ["https://a.example/", "https://b.example/"]}, {}),
        ({"async": "true", "ttl": "-1"}, {}),
        ({"async": "true", "ttl": "9" * 400}, {}),
        ({"async": "true"}, {"idempotency-key": "k" * 10_000}),
        ({"async": "true"}, {"idempotency-key": ""}),
        ({"async": "true"}, {"x-cortex-result-ttl": "9" * 400}),
        ({"async": "true"}, {"x-cortex-result-ttl": "\u00b2".encode()}),
        ({}, {"content-type": "text/plain"}),
        ({}, {"accept": "text/event-stream"}),
    ],
)
def test_hostile_options_get_a_2xx_or_a_json_4xx(server: Served, client: httpx.Client, params, headers):
    response = client.post(f"{server.base}/add", params=params, headers=headers, json={"a": 1, "b": 1})
    if response.status_code < 300:
        assert response.json().get("result", {"sum": 2}) == {"sum": 2}
    else:
        assert_json_4xx(response, 400, 413, 422)


def test_hostile_cursors_and_limits_get_a_2xx_or_a_json_4xx(server: Served, client: httpx.Client):
    submitted = client.post(f"{server.base}/tokens", params={"async": "true"}, json={"n": 2})
    events = f"{submitted.headers['location']}/events"
    answers = [
        client.get(events, headers={"last-event-id": cursor}, timeout=10)
        for cursor in (b"-1", b"abc", b"9" * 400, b"1e9", "\u00e9".encode())
    ]
    listing = f"{server.base}/runs"
    queries = [{"status": "nope"}, {"limit": "0"}, {"limit": "9" * 30}, {"cursor": "%%%"}, {"cursor": "e30"}]
    answers += [client.get(listing, params=query) for query in queries]
    for response in answers:
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert_json_4xx(response, 400, 422)
    assert sum(response.status_code >= 400 for response in answers) >= len(queries) - 1
