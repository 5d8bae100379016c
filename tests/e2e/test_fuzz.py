"""Schemathesis fuzzes every operation of the served /openapi.json, with valid and invalid data.

Whatever a client sends, Cortex answers with a documented status and content type, never a 5xx
(the fuzz target's functions never raise), and every 4xx is `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cortex.errors import WebhookRefusedError
from cortex.jobs.ssrf import check_webhook_url, parse_allow_cidrs
from tests.auth_tokens import SECRET, claims, hs256
from tests.conftest import APPS, Served, WebhookReceiver, serving

PROJECT = "p-local"  # the fuzz target's own; a token for it

EXAMPLES = 20  # per operation and generation mode
MINIMUM_CASES = 1000
LOCAL = "127.0.0.0/8"  # the webhook receiver listens on loopback
ALLOWED = parse_allow_cidrs(LOCAL)
# The document is the contract: statuses, content types and bodies must be the documented ones.
CONFORMANCE: list[CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the repo
    derandomize=True,  # the same cases on every run: CI is reproducible
    phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
    suppress_health_check=list(HealthCheck),
    verbosity=Verbosity.quiet,
    print_blob=False,
)


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # one example per kind of failure
    run_ids: dict[str, list[str]] = field(default_factory=dict)  # from 202s, per operation

    def record(self, case: Case, mode: GenerationMode, problem: str | None, response: Any) -> None:
        self.cases += 1
        self.statuses[(mode.value, response.status_code // 100 * 100)] += 1
        content_type = (response.headers.get("content-type") or [""])[0].split(";")[0]
        self.statuses[(content_type, response.status_code)] += 1
        if problem is not None:
            key = f"{case.operation.label} [{mode.value}] {problem.splitlines()[0][:120]}"
            self.failures.setdefault(key, f"{problem}\n    {case.as_curl_command()[:1500]}")


def error_shape_problem(status: int, content_type: str, content: bytes) -> str | None:
    """Why an answer is not one a client can rely on (a 5xx, a 4xx without the error body), or None."""
    body = content[:300].decode("utf-8", "replace")
    if status >= 500:
        return f"{status}: {body}"
    if status < 400:
        return None
    if content_type.split(";")[0] != "application/json":
        return f"{status} with content-type {content_type!r}: {body}"
    try:
        error = json.loads(content)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    except Exception:
        return f"{status} without an error code and message: {body}"
    return None


def conformance_problem(case: Case, response: Any) -> str | None:
    """What the response does that the document does not say, or None."""
    try:
        case.validate_response(response, checks=CONFORMANCE)
    except FailureGroup as group:
        return "\n".join(f"{failure.title}: {failure.message}" for failure in group.exceptions)
    except Failure as failure:
        return f"{failure.title}: {failure.message}"
    return None


def local_webhook(value: Any, netloc: str) -> Any:
    """An http(s) URL moved onto the local receiver; anything else the server refuses unresolved.

    Generated URLs name real-looking hosts: resolving them would leave the machine, and a public
    IP literal would be delivered to. Non-URLs are sent as generated (a 422 before any lookup).
    """
    if isinstance(value, list):
        return [local_webhook(item, netloc) for item in value]
    if isinstance(value, dict):
        return json.dumps(value)
    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.scheme.lower() not in ("http", "https"):
        return value
    return urlunsplit(("http", netloc, parts.path, parts.query, ""))


def assert_resolves_nothing(value: Any) -> None:
    """The server's own webhook check, run first: it refuses the URL, or accepts a loopback
    address, without resolving a name (a lookup would leave the machine)."""

    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError(f"the server would resolve {host!r} for webhookEndpoint={value!r}")

    for url in value if isinstance(value, list) else [value]:
        if isinstance(url, str):
            try:
                checked = check_webhook_url(url, ALLOWED, resolve)
            except WebhookRefusedError:
                continue
            assert checked.address.is_loopback, url


def fuzz(
    served: Served,
    case_strategy: Any,
    mode: GenerationMode,
    tally: Tally,
    receiver: str,
    headers: dict[str, str],
) -> None:
    @SETTINGS
    @given(case_strategy)
    def call(case: Case) -> None:
        if case.query and "webhookEndpoint" in case.query:
            case.query["webhookEndpoint"] = local_webhook(case.query["webhookEndpoint"], receiver)
            assert_resolves_nothing(case.query["webhookEndpoint"])
        response = case.call(base_url=served.url, headers=headers, timeout=30)
        content_type = (response.headers.get("content-type") or [""])[0]
        problem = error_shape_problem(response.status_code, content_type, response.content)
        if problem is None:
            problem = conformance_problem(case, response)
        if response.status_code == 202:
            tally.run_ids.setdefault(case.operation.label, []).append(json.loads(response.content)["run_id"])
        tally.record(case, mode, problem, response)

    call()


@pytest.fixture(autouse=True)
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis keeps caches (constants, unicode data) beside its database: not in the repo."""
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)  # back to the default, for whatever runs next


def can_be_wrong(operation: Any) -> bool:
    """Whether negative data exists: a path segment or header string cannot be the wrong type."""
    return bool(operation.body or operation.query)


AUTH_SETTINGS = {"auth": True, "jwt_secret": SECRET, "project_id": PROJECT}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_every_operation_answers_documented_json_errors_and_no_5xx(
    webhook_receiver: WebhookReceiver, auth: bool
) -> None:
    """With auth on, every case carries a valid token: auth must not change any other answer."""
    tally = Tally()
    receiver = urlsplit(webhook_receiver.url).netloc
    settings = AUTH_SETTINGS if auth else {}
    token = hs256(claims(projectId=PROJECT, aud=None, iss=None))
    headers = {"authorization": f"Bearer {token}"} if auth else {}
    with serving(APPS / "fuzz_target", webhook_allow_cidrs=LOCAL, **settings) as served:
        schema = schemathesis.openapi.from_url(
            f"{served.url}/openapi.json", config=schemathesis.Config(), headers=headers
        )
        operations = [result.ok() for result in schema.get_all_operations()]
        documented = {
            (method.upper(), path) for path, item in schema.raw_schema["paths"].items() for method in item
        }
        # Schemathesis leaves out the operation that served it the document: GET /openapi.json.
        assert {(op.method.upper(), op.path) for op in operations} | {("GET", "/openapi.json")} == documented
        for operation in operations:
            modes = list(GenerationMode) if can_be_wrong(operation) else [GenerationMode.POSITIVE]
            for mode in modes:
                fuzz(served, operation.as_strategy(generation_mode=mode), mode, tally, receiver, headers)
        # The run routes again, on real runs: one of each function that was submitted.
        run_ids = [ids[0] for ids in tally.run_ids.values()]
        for operation in (op for op in operations if "{run_id}" in op.path):
            for run_id in run_ids:
                strategy = operation.as_strategy(path_parameters={"run_id": run_id})
                fuzz(served, strategy, GenerationMode.POSITIVE, tally, receiver, headers)
    report = "\n".join(f"{key}\n  {example}" for key, example in sorted(tally.failures.items()))
    assert not tally.failures, f"{len(tally.failures)} kinds of failure:\n{report}"
    assert tally.cases >= MINIMUM_CASES, tally.statuses
    # What the cases reached: rejections, results, accepted runs (of generators too), streams.
    assert len(run_ids) >= 8, tally.run_ids.keys()
    for kind in [("negative", 400), ("positive", 200), ("application/json", 202), ("text/event-stream", 200)]:
        assert tally.statuses[kind] > 0, (kind, tally.statuses)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])
def test_undocumented_methods_are_json_4xx_on_every_documented_path(method: str) -> None:
    with serving(APPS / "fuzz_target") as served, served.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
        answers = {
            path: client.request(method, path.replace("{run_id}", "r-1").replace("{model_id}", "fuzz-llm"))
            for path, item in paths.items()
            if method.lower() not in item
        }
    assert answers
    problems = {
        path: error_shape_problem(r.status_code, r.headers.get("content-type", ""), r.content)
        for path, r in answers.items()
    }
    assert {path: problem for path, problem in problems.items() if problem} == {}
    # POST .../runs is a call of a function named `runs` (none here): 404. Elsewhere 405 + Allow.
    statuses = {path: r.status_code for path, r in answers.items() if not path.endswith("/runs")}
    assert set(statuses.values()) == {405}, statuses
    for path, response in answers.items():
        if response.status_code == 405:
            allowed = {m.strip().lower() for m in response.headers["allow"].split(",")}
            assert set(paths[path]) <= allowed, (path, response.headers["allow"])
