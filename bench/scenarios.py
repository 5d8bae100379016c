"""What each variant is asked to do, and the one sanity request that checks it does it right."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

STREAM_EVENTS = 1000
SANITY_TIMEOUT_S = 30.0


class SanityError(Exception):
    """A variant answered the sanity request with something other than the expected 200 body."""


@dataclass(frozen=True)
class Scenario:
    """One function called on every variant: `rr` is request/response (wrk), `sse` a stream."""

    function: str
    kind: str
    label: str
    body: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("predict", "rr", "sync def predict", {"x": 1}),
    Scenario("apredict", "rr", "async def apredict", {"x": 1}),
    Scenario("stream", "sse", "sync generator stream", {"n": STREAM_EVENTS}),
    Scenario("astream", "sse", "async generator astream", {"n": STREAM_EVENTS}),
]


def check(url: str, scenario: Scenario) -> None:
    """Send one request and raise SanityError unless the reply is exactly what we bench."""
    if scenario.kind == "rr":
        check_call(url, scenario.body)
    else:
        check_stream(url, scenario.body, int(scenario.body["n"]))


def check_call(url: str, body: dict[str, Any]) -> None:
    response = httpx.post(url, json=body, timeout=SANITY_TIMEOUT_S)
    _expect_200(response)
    try:
        payload = response.json()
    except json.JSONDecodeError as exc:
        raise SanityError(f"POST {url}: body is not JSON ({exc}): {response.text[:300]!r}") from exc
    problems = call_problems(payload, expected_result=2)
    if problems:
        raise SanityError(f"POST {url}: {'; '.join(problems)}; got {payload!r}")


def call_problems(payload: Any, expected_result: Any) -> list[str]:
    """What is wrong with a `{"run_id", "run_time_ms", "result"}` reply (empty when nothing)."""
    if not isinstance(payload, dict):
        return ["reply is not a JSON object"]
    problems = []
    missing = {"run_id", "run_time_ms", "result"} - payload.keys()
    if missing:
        problems.append(f"missing keys {sorted(missing)}")
    if "run_id" in payload and not _is_uuid4(payload["run_id"]):
        problems.append("run_id is not a uuid4 string")
    run_time = payload.get("run_time_ms")
    if "run_time_ms" in payload and (isinstance(run_time, bool) or not _is_number(run_time)):
        problems.append("run_time_ms is not a number")
    if "result" in payload and payload["result"] != expected_result:
        problems.append(f"result is {payload['result']!r}, expected {expected_result!r}")
    return problems


def check_stream(url: str, body: dict[str, Any], events: int) -> None:
    headers = {"Accept": "text/event-stream"}
    response = httpx.post(url, json=body, headers=headers, timeout=SANITY_TIMEOUT_S)
    _expect_200(response)
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise SanityError(f"POST {url}: content-type is {content_type!r}, not text/event-stream")
    try:
        data = [json.loads(item) for item in parse_sse_data(response.text)]
    except json.JSONDecodeError as exc:
        raise SanityError(f"POST {url}: an SSE data field is not JSON ({exc})") from exc
    expected = [{"i": i} for i in range(events)]
    if data != expected:
        raise SanityError(
            f"POST {url}: expected {events} events {{'i': 0}}..{{'i': {events - 1}}}, "
            f"got {len(data)} starting {data[:3]!r}"
        )


def parse_sse_data(text: str) -> list[str]:
    """The data of every SSE event that has `data:` fields, in order."""
    payloads = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line[:5] == "data:"]
        if lines:
            payloads.append("\n".join(lines))
    return payloads


def _expect_200(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise SanityError(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code}, "
            f"expected 200: {response.text[:300]!r}"
        )


def _is_uuid4(value: Any) -> bool:
    try:
        return isinstance(value, str) and uuid.UUID(value).version == 4
    except ValueError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))
