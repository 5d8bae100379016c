"""Failures inside user code, oversized bodies, deadlines and the concurrency cap."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.conftest import APPS, serving


@pytest.fixture(scope="module")
def raises():
    with serving(APPS / "raises") as served:
        yield served


def test_user_exception_is_500_with_type_and_message(raises):
    with raises.client() as client:
        response = client.post(f"{raises.base}/boom", json={"message": "no cats allowed"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == {"type": "ValueError", "message": "no cats allowed"}
    assert body["run_id"] == response.headers["x-request-id"]
    assert body["run_time_ms"] >= 0
    assert "Traceback" not in response.text


def test_async_user_exception_is_500(raises):
    with raises.client() as client:
        response = client.post(f"{raises.base}/aboom")
    assert response.status_code == 500
    assert response.json()["error"] == {"type": "KeyError", "message": "'missing'"}


def test_users_own_timeout_error_is_500_not_504(raises):
    with raises.client() as client:
        response = client.post(f"{raises.base}/user_timeout")
    assert response.status_code == 500
    assert response.json()["error"] == {"type": "TimeoutError", "message": "upstream API timed out"}


def test_result_that_is_not_json_is_500_naming_function_and_type(raises):
    with raises.client() as client:
        response = client.post(f"{raises.base}/opaque")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "ResultNotSerializableError"
    assert error["message"] == (
        "opaque() returned a value that cannot be written as JSON (Unable to serialize unknown "
        "type: <class 'main.Opaque'>). Return JSON types, pydantic models or dataclasses."
    )


def test_body_over_limit_is_413_when_sized(serve):
    with serve("echo", max_body_bytes=100) as served, served.client() as client:
        response = client.post(f"{served.base}/predict", json={"prompt": "x" * 200})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        "The request body is larger than 100 bytes (CORTEX_MAX_BODY_BYTES). Send less, or raise the limit."
    )


def test_body_over_limit_is_413_when_chunked(serve):
    def chunks():
        for _ in range(10):
            yield b"x" * 50

    with serve("echo", max_body_bytes=100) as served, served.client() as client:
        response = client.post(f"{served.base}/predict", content=chunks())
    assert response.status_code == 413


def test_call_past_response_grace_period_is_504_with_run_id(serve):
    with serve("slow") as served, served.client() as client:
        started = time.monotonic()
        response = client.post(f"{served.base}/asleep", json={"seconds": 5})
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    body = response.json()
    assert body["run_id"] == response.headers["x-request-id"]
    assert body["error"] == {
        "type": "Timeout",
        "message": (
            f"asleep() did not finish within response_grace_period (1 s); run {body['run_id']} was abandoned."
        ),
    }
    assert elapsed < 3


def test_sync_calls_run_in_threads_and_never_block_the_loop(serve):
    with serve("busy") as served:
        results: list[int] = []

        def slow_call():
            with served.client() as client:
                results.append(client.post(f"{served.base}/sleep", json={"seconds": 1.5}).status_code)

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.3)
        with served.client() as client:
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            assert time.monotonic() - started < 0.5
        caller.join()
    assert results == [200]


async def _burst(url: str, count: int, seconds: float) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url, json={"seconds": seconds}) for _ in range(count)))


def test_excess_calls_wait_in_queue_then_get_429_with_retry_after(serve):
    # replica_concurrency = 2 and a queue of 2: of 8 simultaneous calls, 4 are served.
    with serve("busy", max_queue=2) as served:
        responses = asyncio.run(_burst(f"{served.base}/asleep", 8, 0.5))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 4 + [429] * 4
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["message"] == (
        "Too many requests: 2 running and 2 waiting (replica_concurrency=2, CORTEX_MAX_QUEUE=2). "
        "Retry after a moment."
    )


def test_in_flight_calls_never_exceed_replica_concurrency(serve):
    with serve("busy") as served:
        started = time.monotonic()
        responses = asyncio.run(_burst(f"{served.base}/asleep", 6, 0.4))
        elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert elapsed >= 1.2  # 6 calls, 2 at a time, 0.4 s each: three waves
    # run_time_ms is the function's own time: the last wave waited 0.8 s but ran for 0.4 s.
    assert max(r.json()["run_time_ms"] for r in responses) < 1000


def test_ready_is_503_until_main_py_is_imported(serve, monkeypatch):
    monkeypatch.setenv("SLOW_IMPORT_SECONDS", "1.5")
    with serve("slow_import", wait_ready=False) as served, served.client() as client:
        loading = client.get("/ready")
        call = client.post(f"{served.base}/predict")
        assert client.get("/health").status_code == 200
        ready = _poll_until_ready(client)
        after = client.post(f"{served.base}/predict")
    assert loading.status_code == 503
    assert loading.headers["retry-after"] == "5"
    assert call.status_code == 503
    assert call.json()["error"]["code"] == "not_ready"
    assert ready.status_code == 200
    assert after.json()["result"] == "loaded"


def _poll_until_ready(client: httpx.Client) -> httpx.Response:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = client.get("/ready")
        if response.status_code == 200:
            return response
        time.sleep(0.05)
    raise AssertionError("never became ready")


def test_nan_and_infinity_become_null_so_the_body_stays_json(raises):
    with raises.client() as client:
        response = client.post(f"{raises.base}/not_a_number")
    assert response.status_code == 200
    assert b"NaN" not in response.content and b"Infinity" not in response.content
    assert response.json()["result"] == {"nan": None, "inf": None, "ok": 1.5}


def test_stop_iteration_in_a_sync_function_is_a_500_not_a_hang(raises):
    with raises.client(timeout=5) as client:
        response = client.post(f"{raises.base}/first_match", json={"items": [1, 2]})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "type": "RuntimeError",
        "message": "first_match() raised StopIteration",
    }


def test_stream_past_response_grace_period_ends_with_a_timeout_event(serve):
    with serve("slow") as served, served.client() as client:
        response = client.post(f"{served.base}/drip", headers={"accept": "text/event-stream"})
        assert served.state.gate.active == 0
    events = response.text.split("\n\n")
    assert events[0] == 'data: {"i":0}'
    assert events[-1] == ""  # the stream ends cleanly, after a whole event
    assert events[-2] == (
        'event: error\ndata: {"type":"Timeout","message":"drip() streamed past response_grace_period '
        f'(1 s); the stream was ended.","run_id":"{response.headers["x-request-id"]}"}}'
    )
    assert 5 <= len(events) - 2 <= 12  # about ten chunks in one second
