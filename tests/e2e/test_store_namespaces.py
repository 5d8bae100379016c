"""Two projects' servers on one store file: each sees, lists and runs only its own runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import APPS, Served, serving, wait_for
from tests.e2e.test_async_runs import poll_until_done, submit


@pytest.fixture
def two_projects(tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    """tests/apps/jobs served as project p-one and as p-two, both on tmp_path/shared.db."""
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    with (
        serving(APPS / "jobs", store=store, project_id="p-one") as one,
        serving(APPS / "jobs", store=store, project_id="p-two") as two,
    ):
        yield one, two


def _status(served: Served, run_id: str) -> str:
    with served.client() as client:
        status: str = client.get(f"{served.base}/runs/{run_id}").json()["status"]
        return status


def _listed(served: Served) -> list[str]:
    with served.client() as client:
        body = client.get(f"{served.base}/runs").json()
    assert body["next_cursor"] is None
    return [run["run_id"] for run in body["runs"]]


def test_a_run_of_another_project_answers_exactly_like_an_unknown_run(two_projects):
    one, two = two_projects
    assert (one.base, two.base) == (f"{one.url}/v4/p-one/jobs", f"{two.url}/v4/p-two/jobs")
    run_id = submit(one, "tokens", {"n": 2}).json()["run_id"]
    assert poll_until_done(one, run_id)["result"] == [{"token": 0}, {"token": 1}]
    unknown = str(uuid.uuid4())
    with two.client() as client:
        for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/events")]:
            theirs = client.request(method, f"{two.base}/runs/{run_id}{path}")
            never = client.request(method, f"{two.base}/runs/{unknown}{path}")
            assert (theirs.status_code, never.status_code) == (404, 404), (method, path)
            # The same body, the id aside: nothing tells that the run exists elsewhere.
            assert theirs.text == never.text.replace(unknown, run_id), (method, path)
        assert theirs.json() == {
            "error": {
                "code": "not_found",
                "message": f"No run '{run_id}' (it never existed, or was deleted after its TTL).",
            }
        }
        assert client.get(f"{two.base}/runs").json() == {"runs": [], "next_cursor": None}
    assert _listed(one) == [run_id]
    with one.client() as client:  # server two's DELETE cancelled nothing
        assert client.get(f"{one.base}/runs/{run_id}").json()["status"] == "completed"


def test_a_server_never_runs_another_projects_run(two_projects, tmp_path: Path):
    one, two = two_projects
    # Both of server one's slots (replica_concurrency = 2) are busy, so its next run waits.
    blockers = [submit(one, "asleep", {"seconds": 30}).json()["run_id"] for _ in range(2)]
    wait_for(lambda: all(_status(one, b) == "processing" for b in blockers), 10, "server one to be busy")
    marker = tmp_path / "count"
    waiting = submit(one, "count", {"marker": str(marker)}).json()["run_id"]

    # Server two's worker takes the oldest pending run it can see, and one's waiting run is
    # older than two's own: once two has run its own, it has looked past one's run.
    own = submit(two, "add", {"a": 1, "b": 2}).json()["run_id"]
    assert poll_until_done(two, own)["result"] == {"sum": 3}
    assert _status(one, waiting) == "pending"
    assert not marker.exists()

    with one.client() as client:  # free server one: its own worker runs it, once
        for blocker in blockers:
            assert client.delete(f"{one.base}/runs/{blocker}").status_code == 200
    assert poll_until_done(one, waiting)["result"] == "counted"
    assert marker.read_text() == "ran\n"
    assert sorted(_listed(one)) == sorted([waiting, *blockers])
    assert _listed(two) == [own]
