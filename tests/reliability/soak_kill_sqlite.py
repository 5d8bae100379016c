"""2,000 async runs (fast: 200) on SQLite; the server is killed with kill -9 five times at seeded
random moments and restarted: every accepted run ends, none is lost, none runs past its attempts."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.reliability import harness
from tests.reliability.killing import kill_campaign

NAME = "soak_kill_sqlite"


def run(scale: str, seed: int) -> harness.Result:
    result = harness.Result(NAME, scale, seed)
    with tempfile.TemporaryDirectory(prefix="soak-sqlite-") as scratch:
        kill_campaign(result, Path(scratch), f"sqlite:///{scratch}/runs.db", replicas=1)
    return result


def main(argv: list[str] | None = None) -> int:
    return harness.main(run, __doc__ or NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
