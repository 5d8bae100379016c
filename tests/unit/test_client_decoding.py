"""cortex.client's pure parts: SSE lines -> chunks, HTTP answers -> results or typed errors."""

from __future__ import annotations

import httpx
import pytest

from cortex.client import (
    CortexClientError,
    FunctionError,
    OverloadedError,
    RunCancelledError,
    RunFailedError,
    RunPendingError,
    UnavailableError,
    decode_sse,
    error_from_response,
    outcome,
    result_from_response,
)


def test_decode_sse_joins_data_lines_and_skips_comments_and_ids() -> None:
    lines = ["id: 3", "data: one", "data: two", "", ": keep-alive", "", "retry: 10", 'data: {"a": 1}', ""]
    assert list(decode_sse(lines)) == ["one\ntwo", {"a": 1}]


def test_decode_sse_dispatches_an_unterminated_last_event() -> None:
    assert list(decode_sse(["data: [1, 2]"])) == [[1, 2]]


def test_decode_sse_raises_an_error_event_even_when_it_is_not_json() -> None:
    with pytest.raises(FunctionError) as caught:
        list(decode_sse(["data: 1", "", "event: error", "data: broke", ""]))
    assert (caught.value.type, caught.value.error_message) == ("Error", "broke")


def test_a_result_with_its_own_status_code_is_a_result() -> None:
    response = httpx.Response(400, json={"run_id": "r", "run_time_ms": 1, "result": {"status_code": 400}})
    assert result_from_response(response) == {"status_code": 400}


def test_retry_after_is_read_from_429_and_503() -> None:
    body = {"error": {"code": "overloaded", "message": "busy"}}
    busy = error_from_response(httpx.Response(429, json=body, headers={"retry-after": "2"}))
    assert isinstance(busy, OverloadedError) and busy.retry_after == 2.0
    importing = error_from_response(httpx.Response(503, json=body))
    assert isinstance(importing, UnavailableError) and importing.retry_after is None


def test_a_non_json_error_keeps_the_status_and_text() -> None:
    error = error_from_response(httpx.Response(502, text="bad gateway"))
    assert type(error) is CortexClientError
    assert (error.status, error.message) == (502, "HTTP 502: bad gateway")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("failed", RunFailedError), ("cancelled", RunCancelledError), ("pending", RunPendingError)],
)
def test_outcome_raises_for_runs_without_a_result(status: str, expected: type[Exception]) -> None:
    with pytest.raises(expected):
        outcome({"run_id": "r", "status": status, "error": {"type": "Timeout", "message": "slow"}})
    assert outcome({"run_id": "r", "status": "completed", "result": None}) is None
