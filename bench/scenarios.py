"""What each variant is asked to do, and the one sanity request that checks it does it right."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

STREAM_EVENTS = 1000
SANITY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.01
ASYNC_KINDS = ("async_e2e", "async_submit")


class SanityError(Exception):
    """A variant answered the sanity request with something other than the expected 200 body."""


@dataclass(frozen=True)
class Scenario:
    """One function under load: `rr` is request/response (wrk), `sse` a stream; `async_e2e` and
    `async_submit` are async runs (`?async=true`), only on variants that have a run store."""

    function: str
    kind: str
    label: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Where a round keeps this scenario's result: the function, plus the kind for async runs."""
        return f"{self.function}:{self.kind}" if self.is_async else self.function

    @property
    def is_async(self) -> bool:
        return self.kind in ASYNC_KINDS


SYNC_REFERENCE = Scenario("predict", "rr", "sync def predict", {"x": 1})
# Async runs come last, end-to-end first: it needs an idle store, and the submit load leaves
# thousands of runs queued behind it.
ASYNC_SCENARIOS = [
    Scenario("predict", "async_e2e", "async runs of def predict, submit to completion", {"x": 1}),
    Scenario("predict", "async_submit", "async submit of def predict (202s)", {"x": 1}),
]
SCENARIOS = [
    SYNC_REFERENCE,
    Scenario("apredict", "rr", "async def apredict", {"x": 1}),
    Scenario("stream", "sse", "sync generator stream", {"n": STREAM_EVENTS}),
    Scenario("astream", "sse", "async generator astream", {"n": STREAM_EVENTS}),
    *ASYNC_SCENARIOS,
]


def check(url: str, scenario: Scenario) -> None:
    """Send one request and raise SanityError unless the reply is exactly what we bench."""
    if scenario.is_async:
        check_async_run(url, scenario.body, expected_result=2)
    elif scenario.kind == "rr":
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


def check_async_run(url: str, body: dict[str, Any], expected_result: Any) -> None:
    """Submit one run with `?async=true`, then poll it until it has completed with the result."""
    response = httpx.post(f"{url}?async=true", json=body, timeout=SANITY_TIMEOUT_S)
    _expect_status(response, 202)
    payload = _json(response)
    run_id = payload.get("run_id") if isinstance(payload, dict) else None
    if not _is_uuid4(run_id) or payload.get("status") != "pending":
        raise SanityError(
            f"POST {url}?async=true: expected {{run_id: uuid4, status: pending}}, got {payload!r}"
        )
    poll_url = f"{url.rsplit('/', 1)[0]}/runs/{run_id}"
    if not response.headers.get("location", "").endswith(f"/runs/{run_id}"):
        raise SanityError(f"POST {url}?async=true: Location is {response.headers.get('location')!r}")
    run = _poll_until_done(poll_url)
    if run.get("status") != "completed" or run.get("result") != expected_result:
        raise SanityError(f"GET {poll_url}: expected completed with result {expected_result!r}, got {run!r}")


def _poll_until_done(poll_url: str) -> dict[str, Any]:
    """GET the run until it answers 200 (it ended); 202 means pending or processing."""
    deadline = time.monotonic() + SANITY_TIMEOUT_S
    with httpx.Client(timeout=SANITY_TIMEOUT_S) as client:
        while time.monotonic() < deadline:
            response = client.get(poll_url)
            if response.status_code != 202:
                _expect_status(response, 200)
                payload = _json(response)
                if not isinstance(payload, dict):
                    raise SanityError(f"GET {poll_url}: reply is not a JSON object: {payload!r}")
                return payload
            time.sleep(POLL_INTERVAL_S)
    raise SanityError(f"GET {poll_url}: the run did not end within {SANITY_TIMEOUT_S:.0f} s")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except json.JSONDecodeError as exc:
        request = response.request
        raise SanityError(
            f"{request.method} {request.url}: body is not JSON ({exc}): {response.text[:300]!r}"
        ) from exc


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
    _expect_status(response, 200)


def _expect_status(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise SanityError(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code}, "
            f"expected {status}: {response.text[:300]!r}"
        )


def _is_uuid4(value: Any) -> bool:
    try:
        return isinstance(value, str) and uuid.UUID(value).version == 4
    except ValueError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))
