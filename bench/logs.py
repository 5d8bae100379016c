"""What the per-call log line costs: wrk req/s on tests/apps/echo predict, per log mode.

Each mode runs `cortex serve` as a subprocess (pinned to CPU 0, wrk to CPU 1 when possible),
its stderr and stdout going to a file as a log collector would read them; modes interleave
over rounds and the report gives each mode's median req/s.

    .venv/bin/python bench/logs.py --rounds 3 --seconds 5
    .venv/bin/python bench/logs.py --modes text,json,off
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from servers import REPO_DIR, SERVER_CPU, pinned
from wrk_load import run_wrk

ECHO = REPO_DIR / "tests" / "apps" / "echo"
CORTEX = str(Path(sys.executable).with_name("cortex"))
MODES: dict[str, dict[str, str]] = {
    "text": {"CORTEX_LOG_FORMAT": "text"},
    "json": {"CORTEX_LOG_FORMAT": "json"},
    "off": {"DISABLE_REQUEST_LOGS": "true", "DISABLE_RESPONSE_LOGS": "true"},
}


def measure(mode: str, seconds: float, log: Path) -> float:
    env = {**os.environ, **MODES[mode]}
    command = pinned([CORTEX, "serve", str(ECHO), "--port", "0"], SERVER_CPU)
    with log.open("w") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            url = _wait_for_url(log)
            endpoint = f"{url}/v4/p-local/echo-app/untyped"  # sync: runs in the ThreadRunner
            httpx.post(endpoint, json={"x": 1}).raise_for_status()
            result = run_wrk(endpoint, seconds)
            if result.non_2xx_3xx or result.socket_errors:
                raise RuntimeError(f"{mode}: {result}")
            return result.rps
        finally:
            server.terminate()
            server.wait(15)


def _wait_for_url(log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"Ready\. OpenAPI document: (http://[^/]+)/", log.read_text())
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"the server did not start:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--modes", default="text,json,off")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for mode in modes:
                results[mode].append(measure(mode, args.seconds, Path(tmp) / f"{mode}.log"))
    for mode, figures in results.items():
        rounds = ", ".join(f"{f:.0f}" for f in figures)
        print(f"{mode:5s} median {statistics.median(figures):8.0f} req/s  ({rounds})")


if __name__ == "__main__":
    main()
