"""JWT auth against a real server: the token matrix on every kind of route, and what stays open."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.auth_tokens import (
    AUDIENCE,
    ISSUER,
    PROJECT,
    SECRET,
    bad_tokens,
    claims,
    hs256,
    keys,
    rs256,
)
from tests.conftest import APPS, Served, serving, wait_for

AUTH_SETTINGS = {
    "auth": True,
    "project_id": PROJECT,
    "jwt_secret": SECRET,
    "jwt_audience": AUDIENCE,
    "jwt_issuer": ISSUER,
}


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serving(APPS / "echo", jwt_public_key=keys().rsa_public_pem, **AUTH_SETTINGS) as served:
        yield served


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def routes(server: Served) -> list[tuple[str, str]]:
    """A request of each kind the server answers; unknown names too, so nothing leaks before auth."""
    base = server.state.base_path
    return [
        ("POST", f"{base}/predict"),
        ("POST", f"{base}/predict?async=true"),
        ("GET", f"{base}/runs"),
        ("GET", f"{base}/runs/00000000-0000-0000-0000-000000000000"),
        ("GET", f"{base}/runs/00000000-0000-0000-0000-000000000000/events"),
        ("POST", f"{base}/predict/chat/completions"),
        ("GET", f"{base}/models"),
        ("POST", f"{base}/no-such-function"),
        ("POST", "/v4/p-other/other-app/predict"),
        ("GET", "/openapi.json"),
        ("GET", "/no-such-page"),
    ]


@pytest.mark.parametrize("sign", [hs256, rs256], ids=["HS256", "RS256"])
def test_a_valid_token_calls_functions_and_runs(server: Served, sign: object) -> None:
    headers = bearer(sign(claims()))  # type: ignore[operator]
    with server.client(headers=headers) as client:
        response = client.post(f"{server.state.base_path}/predict", json={"prompt": "hi"})
        assert response.status_code == 200, response.text
        assert response.json()["result"] == {"echo": "hi"}
        submitted = client.post(f"{server.state.base_path}/predict?async=true", json={"prompt": "later"})
        assert submitted.status_code == 202
        poll = submitted.headers["location"]
        done = wait_for(lambda: client.get(poll).status_code == 200 and client.get(poll), 10, "the run")
        assert done.json()["result"] == {"echo": "later"}
        assert client.get("/openapi.json").status_code == 200


def test_every_bad_token_is_refused_on_every_route_and_none_is_a_5xx(server: Served) -> None:
    statuses: dict[tuple[str, str, str], int] = {}
    with server.client() as client:
        for case, value in bad_tokens().items():
            headers = {} if value is None else {"authorization": value}
            for method, path in routes(server):
                response = client.request(method, path, headers=headers, json={"prompt": "x"})
                statuses[(case, method, path)] = response.status_code
                assert response.status_code == 401, (case, method, path, response.text)
                assert response.headers["www-authenticate"].startswith('Bearer realm="cortex"')
                assert response.headers["content-type"] == "application/json"
                error = response.json()["error"]
                assert error["code"] in ("unauthorized", "invalid_token") and error["message"]
    accepted = [key for key, status in statuses.items() if status < 400]
    server_errors = [key for key, status in statuses.items() if status >= 500]
    assert (accepted, server_errors) == ([], [])
    assert len(statuses) == len(bad_tokens()) * len(routes(server))


def test_a_token_for_another_project_is_403_everywhere(server: Served) -> None:
    headers = bearer(hs256(claims(projectId="p-other")))
    with server.client(headers=headers) as client:
        for method, path in routes(server):
            response = client.request(method, path, json={"prompt": "x"})
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "forbidden"
            assert "'p-other'" in response.json()["error"]["message"]


def test_an_expired_token_says_so(server: Served) -> None:
    token = hs256(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600))
    response = httpx.post(f"{server.base}/predict", json={"prompt": "x"}, headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "expired" in response.json()["error"]["message"]


def test_a_200_kb_token_is_refused_fast_and_the_server_keeps_serving(server: Served) -> None:
    huge = "Bearer " + "a" * 200_000
    started = time.monotonic()
    try:
        response = httpx.post(f"{server.base}/predict", json={"prompt": "x"}, headers={"authorization": huge})
        status = response.status_code
    except httpx.RemoteProtocolError:
        status = 0  # closed before answering is a refusal too; the assertion below says which
    elapsed = time.monotonic() - started
    assert status in (401, 431), status
    assert elapsed < 2, elapsed
    ok = httpx.post(f"{server.base}/predict", json={"prompt": "x"}, headers=bearer(hs256(claims())))
    assert ok.status_code == 200


def test_health_and_ready_stay_open(server: Served) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/ready").json()["status"] == "ready"


def test_metadata_can_be_made_public() -> None:
    with serving(APPS / "echo", public_metadata=True, **AUTH_SETTINGS) as served:
        assert httpx.get(f"{served.url}/openapi.json").status_code == 200
        assert httpx.post(f"{served.base}/predict", json={"prompt": "x"}).status_code == 401


def test_cerebrium_toml_disable_auth_false_turns_auth_on() -> None:
    with serving(APPS / "private", jwt_secret=SECRET, project_id=PROJECT) as served:
        assert httpx.post(f"{served.base}/whoami", json={"name": "a"}).status_code == 401
        token = hs256(claims(aud=None, iss=None))
        response = httpx.post(f"{served.base}/whoami", json={"name": "a"}, headers=bearer(token))
        assert response.json()["result"] == {"hello": "a"}


def test_a_run_of_another_project_is_404_even_with_a_valid_token(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = {"auth": True, "jwt_secret": SECRET, "store": store}
    with (
        serving(APPS / "echo", project_id="p-one", **settings) as one,
        serving(APPS / "echo", project_id="p-two", **settings) as two,
    ):
        token_one = bearer(hs256(claims(projectId="p-one", aud=None, iss=None)))
        token_two = bearer(hs256(claims(projectId="p-two", aud=None, iss=None)))
        submitted = httpx.post(f"{one.base}/predict?async=true", json={"prompt": "x"}, headers=token_one)
        run_id = submitted.json()["run_id"]
        assert httpx.get(f"{one.base}/runs/{run_id}", headers=token_one).status_code in (200, 202)
        theirs = httpx.get(f"{two.base}/runs/{run_id}", headers=token_two)
        unknown = httpx.get(f"{two.base}/runs/{uuid.uuid4()}", headers=token_two)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
        # and the other project's token is refused outright on the run's own server
        assert httpx.get(f"{one.base}/runs/{run_id}", headers=token_two).status_code == 403
