"""schemathesis over every operation of a real `cortex serve`'s /openapi.json (tests/apps/
fuzz_target, whose functions never raise): at least 1,000 cases (fast: 100), valid and invalid
data, then the run routes on real runs. No 5xx (every one would be Cortex's own), and every
answer is the documented status, content type and body (the checks of tests/e2e/test_fuzz.py)."""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import Case, GenerationMode

from tests.e2e.test_fuzz import (
    LOCAL,
    Tally,
    assert_resolves_nothing,
    can_be_wrong,
    conformance_problem,
    error_shape_problem,
    local_webhook,
)
from tests.reliability import harness
from tests.reliability.harness import Server, WebhookReceiver

NAME = "soak_fuzz"
APP = harness.REPO / "tests" / "apps" / "fuzz_target"
MINIMUM_CASES = 1000
EXAMPLES = {"full": 40, "fast": 4}  # per operation and generation mode


def _fuzz(url: str, strategy: Any, mode: GenerationMode, tally: Tally, receiver: str, options: Any) -> None:
    @options  # type: ignore[untyped-decorator]  # hypothesis.settings, applied through Any
    @given(strategy)
    def call(case: Case[Any]) -> None:
        if case.query and "webhookEndpoint" in case.query:
            case.query["webhookEndpoint"] = local_webhook(case.query["webhookEndpoint"], receiver)
            assert_resolves_nothing(case.query["webhookEndpoint"])
        response = case.call(base_url=url, timeout=30)
        content_type = (response.headers.get("content-type") or [""])[0]
        problem = error_shape_problem(response.status_code, content_type, response.content)
        if problem is None:
            problem = conformance_problem(case, response)
        if response.status_code == 202:
            tally.run_ids.setdefault(case.operation.label, []).append(response.json()["run_id"])
        tally.record(case, mode, problem, response)

    call()


def _campaign(url: str, receiver: str, options: Any) -> tuple[Tally, int]:
    tally = Tally()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=schemathesis.Config())
    # An Err (an operation the document cannot describe) raises here: that is a failure too.
    operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
    for operation in operations:
        modes = list(GenerationMode) if can_be_wrong(operation) else [GenerationMode.POSITIVE]
        for mode in modes:
            _fuzz(url, operation.as_strategy(generation_mode=mode), mode, tally, receiver, options)
    run_ids = [ids[0] for ids in tally.run_ids.values()]  # the run routes on real runs
    for operation in (op for op in operations if "{run_id}" in op.path):
        for run_id in run_ids:
            strategy = operation.as_strategy(path_parameters={"run_id": run_id})
            _fuzz(url, strategy, GenerationMode.POSITIVE, tally, receiver, options)
    return tally, len(operations)


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    minimum = harness.scaled(MINIMUM_CASES, scale)
    options = settings(
        max_examples=EXAMPLES[scale],
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )

    def seeded(test: Any) -> Any:
        return hypothesis_seed(seed)(options(test))

    receiver = WebhookReceiver()
    receiver.start()
    with tempfile.TemporaryDirectory(prefix="soak-fuzz-") as scratch:
        set_hypothesis_home_dir(str(Path(scratch) / "hypothesis"))  # no .hypothesis in the repo
        env = {"CORTEX_WEBHOOK_ALLOW_CIDRS": LOCAL}
        server = Server(APP, f"sqlite:///{scratch}/runs.db", env)
        try:
            server.wait_ready()
            tally, operations = _campaign(server.url, urlsplit(receiver.url).netloc, seeded)
            exit_code = server.terminate(60)
        finally:
            left = server.close()
            receiver.stop()
            set_hypothesis_home_dir(None)
    by_class: Counter[int] = Counter()
    for (kind, status), n in tally.statuses.items():
        if kind in _MODES:
            by_class[status] += n
    server_errors = sum(n for status, n in by_class.items() if status >= 500)
    result.figures.update(
        operations=operations,
        cases=tally.cases,
        server_5xx=server_errors,
        contract_problems=len(tally.failures),
        by_status=dict(sorted(by_class.items())),
        runs_fuzzed=len(tally.run_ids),
    )
    report = "; ".join(sorted(tally.failures)[:5])
    result.check(server_errors == 0, f"{server_errors} framework 5xx")
    result.check(not tally.failures, f"{len(tally.failures)} kinds of undocumented answer: {report}")
    result.check(tally.cases >= minimum, f"only {tally.cases} cases (at least {minimum} wanted)")
    result.check(exit_code == -15, f"exit code after SIGTERM: {exit_code}")
    result.check(not left, f"processes left running: {left}")
    return result


_MODES = {mode.value for mode in GenerationMode}  # Tally counts status classes per mode


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
