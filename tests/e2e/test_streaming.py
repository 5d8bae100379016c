"""Generators: SSE framing, errors mid-stream, disconnects, and the collected-list fallback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import APPS, serving, wait_for

SSE = {"accept": "text/event-stream"}


@pytest.fixture(scope="module")
def words():
    with serving(APPS / "stream_words") as served:
        yield served


def stream_text(served, function: str, body: dict | None = None) -> httpx.Response:
    with served.client() as client:
        return client.post(f"{served.base}/{function}", json=body or {}, headers=SSE)


def test_sync_generator_streams_sse(words):
    response = stream_text(words, "words", {"text": "a b c"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"]
    assert response.text == "data: a\n\ndata: b\n\ndata: c\n\n"


def test_async_generator_streams_sse(words):
    response = stream_text(words, "awords", {"text": "x y"})
    assert response.text == 'data: {"word":"x"}\n\ndata: {"word":"y"}\n\n'


def test_chunk_framing_rules(words):
    assert stream_text(words, "mixed").text == (
        "data: pre-framed\n\n"
        "event: note\ndata: custom\n\n"
        ": a comment\n\n"
        "data: two\ndata: lines\n\n"
        'data: {"k":[1,2]}\n\n'
        'data: [1,"a"]\n\n'
        "data: raw bytes\n\n"
    )


@pytest.mark.parametrize(
    ("function", "message"),
    [("fails_midway", "the model fell over"), ("afails_midway", "async model fell over")],
)
def test_exception_mid_stream_ends_with_error_event(words, function, message):
    response = stream_text(words, function)
    run_id = response.headers["x-request-id"]
    error = {"type": "RuntimeError", "message": message, "run_id": run_id}
    assert response.text == (
        'data: {"i":0}\n\ndata: {"i":1}\n\nevent: error\ndata: '
        + json.dumps(error, separators=(",", ":"))
        + "\n\n"
    )


def test_long_stream_arrives_complete_and_in_order(words):
    response = stream_text(words, "count", {"n": 1000})
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    assert events == [{"i": i} for i in range(1000)]


def test_generator_without_sse_accept_returns_collected_list(words):
    with words.client() as client:
        response = client.post(f"{words.base}/words", json={"text": "a b"})
    assert response.json()["result"] == ["a", "b"]
    with words.client() as client:
        response = client.post(f"{words.base}/awords", json={"text": "q"})
    assert response.json()["result"] == [{"word": "q"}]


@pytest.mark.parametrize("function", ["endless", "aendless"])
def test_client_disconnect_closes_the_generator(words, tmp_path: Path, function):
    marker = tmp_path / "closed"
    with (
        words.client() as client,
        client.stream(
            "POST", f"{words.base}/{function}", json={"marker": str(marker)}, headers=SSE
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == 'data: {"i":0}'
    # The client is gone: the generator's `finally` must run soon, not never.
    # exists() can see the file between its creation and its write; wait for the content.
    closed = wait_for(
        lambda: marker.exists() and marker.read_text(), timeout=5, what=f"{function}() to be closed"
    )
    assert closed == "closed"
    time.sleep(0.2)
    assert words.state.gate.active == 0  # the slot was given back


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_receives_the_stream(words):
    result = subprocess.run(
        [
            "curl",
            "-sN",
            "-X",
            "POST",
            f"{words.base}/words",
            "-H",
            "accept: text/event-stream",
            "-H",
            "content-type: application/json",
            "-d",
            '{"text": "via curl"}',
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert result.stdout == "data: via\n\ndata: curl\n\n"


@pytest.mark.parametrize("function", ["bad_chunk", "abad_chunk"])
def test_chunk_that_is_not_json_ends_the_stream_with_an_error_event(words, function):
    response = stream_text(words, function)
    assert response.status_code == 200
    first, second = response.text.split("\n\n")[:2]
    assert first == 'data: {"i":0}'
    assert second.startswith(
        'event: error\ndata: {"type":"PydanticSerializationError","message":"Unable to serialize'
    )
    assert response.text.endswith("\n\n")
