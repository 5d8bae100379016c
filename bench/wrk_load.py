"""Request/response load with wrk: POST {"x": 1}, pinned to the load CPU, summary read as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from servers import LOAD_CPU, pinned

LUA_SCRIPT = Path(__file__).resolve().parent / "post_json.lua"
SUMMARY_MARKER = "BENCH_JSON "
INSTALL_HINT = (
    "wrk is not installed: install it with `apt-get update && apt-get install -y wrk` "
    "(Debian/Ubuntu) or `brew install wrk` (macOS)"
)


class WrkError(Exception):
    """wrk is missing, failed, or printed no summary."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx_3xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(INSTALL_HINT)
    return path


def wrk_version() -> str:
    """wrk's own banner (`wrk -v` prints it and exits 1), e.g. 'debian/4.1.0-3+b2 [epoll]'."""
    done = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True, check=False)
    banner = (done.stdout or done.stderr).splitlines()
    return banner[0].split(" Copyright")[0].removeprefix("wrk ").strip() if banner else "unknown"


def run_wrk(url: str, duration_s: float, connections: int = 64, threads: int = 1) -> WrkResult:
    """Load `url` for `duration_s` seconds and return wrk's summary."""
    command = [
        require_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    done = subprocess.run(pinned(command, LOAD_CPU), capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise WrkError(f"wrk exited with code {done.returncode}: {done.stderr.strip()}")
    return parse_summary(done.stdout)


def parse_summary(stdout: str) -> WrkResult:
    """Read the BENCH_JSON line that post_json.lua's done() prints."""
    lines = [line for line in stdout.splitlines() if line.startswith(SUMMARY_MARKER)]
    if not lines:
        raise WrkError(f"wrk printed no {SUMMARY_MARKER.strip()} summary:\n{stdout}")
    raw = json.loads(lines[-1].removeprefix(SUMMARY_MARKER))
    duration_s = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        duration_s=duration_s,
        rps=raw["requests"] / duration_s if duration_s else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        non_2xx_3xx=raw["non_2xx_3xx"],
        socket_errors=sum(raw[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts")),
    )
