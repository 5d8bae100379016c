"""What every reliability scenario shares: `cortex serve` as a real subprocess on a kernel-chosen
loopback port (killable with kill -9, its children too), a real webhook receiver that verifies
Standard Webhooks signatures, /proc probes (RSS, threads, open fds), /metrics gauges, and the
PASS/FAIL line plus JSON result each scenario ends with.

A scenario module defines `NAME`, `DESCRIPTION` and `run(scale, seed) -> Result`; its `main()` is
`harness.main(NAME, run)`, so `python -m tests.reliability.soak_x --scale fast --seed 7` works.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from standardwebhooks import Webhook

HERE = Path(__file__).parent
REPO = HERE.parent.parent
APP_SOURCE = HERE / "app" / "main.py"
RESULTS = HERE / "results"
PROJECT = "p-local"
DEFAULT_SEED = 20240909
SCALES = ("fast", "full")
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"cortex-reliability-webhook-key-01").decode()
READY_TIMEOUT = 60.0  # a loaded 2-vCPU machine imports cortex and main.py slowly


def scaled(full: int, scale: str) -> int:
    """`full` at full scale, a tenth of it (at least 1) at fast scale."""
    return full if scale == "full" else max(1, round(full / 10))


def make_app(directory: Path, name: str = "soak", concurrency: int = 100, grace: int = 30) -> Path:
    """An app folder with tests/reliability/app/main.py and a cerebrium.toml of these limits."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.py").write_text(APP_SOURCE.read_text())
    (directory / "cerebrium.toml").write_text(
        f'[cerebrium.deployment]\nname = "{name}"\n\n'
        f"[cerebrium.scaling]\nreplica_concurrency = {concurrency}\nresponse_grace_period = {grace}\n"
    )
    return directory


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


# --- processes --------------------------------------------------------------------------------


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def proc_status(pid: int) -> dict[str, int]:
    """RSS (KiB), threads and open file descriptors of a live process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Server:
    """`python -m cortex serve APP --port 0 --store STORE` in its own session; output kept."""

    def __init__(self, app_dir: Path, store: str, env: dict[str, str] | None = None) -> None:
        self.app_dir = app_dir
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CORTEX_WEBHOOK_SECRET": WEBHOOK_SECRET}
        full_env.update(env or {})
        argv = [sys.executable, "-m", "cortex", "serve", str(app_dir), "--port", "0", "--store", store]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=full_env,
            cwd=REPO,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT/v4/p-local/APP"""
        name = re.search(r'name = "([^"]+)"', (self.app_dir / "cerebrium.toml").read_text())
        assert name is not None
        return f"{self.url}/v4/{PROJECT}/{name.group(1)}"

    def output(self, last: int = 40) -> str:
        return "\n".join(self.lines[-last:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cortex serve exited ({self.proc.returncode}):\n{self.output()}")
            for line in list(self.lines):
                match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
                if match:
                    self.url = match.group(1)
            return bool(self.url) and any(line.startswith("Ready.") for line in list(self.lines))

        wait_until(ready, timeout, "cortex serve to be ready")
        return self.url

    def kill9(self) -> list[int]:
        """kill -9 of the server and every process below it; the pids still alive after (none
        expected)."""
        pids = [self.pid, *descendants(self.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reap()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not any(is_alive(pid) for pid in pids), 10, "the killed processes to go")
        return [pid for pid in pids if is_alive(pid)]

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM to the server; its exit code, or None if it outlived `timeout` (then killed)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None
        self._reap()
        return code

    def close(self) -> list[int]:
        """Kill whatever is still running; the pids that survived (none expected)."""
        left = self.kill9() if self.proc.poll() is None or descendants(self.pid) else []
        self._reap()
        return left

    def _reap(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return
        self._reader.join(timeout=5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


def metrics_gauges(url: str) -> dict[str, float]:
    """Gauges of /metrics by sample name: cortex_calls_in_flight, cortex_runs{status="pending"}, ..."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(cortex_\w+(?:\{[^}]*\})?) ([-+.\deE]+)", line)
        if match:
            gauges[match.group(1)] = float(match.group(2))
    return gauges


# --- webhook receiver -------------------------------------------------------------------------


@dataclass
class Delivery:
    webhook_id: str
    run_id: str
    verified: bool
    answered: int
    at: float


class WebhookReceiver:
    """A real HTTP server on a fixed loopback port that can go down and come back on it.

    Every delivery is checked with standardwebhooks at arrival. `fail_once` holds run ids whose
    first delivery is answered 500 (so a retry must carry the same webhook-id).
    """

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_once: set[str] = set()
        self._webhook = Webhook(WEBHOOK_SECRET)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            payload = self._webhook.verify(body, headers)
            verified = True
        except Exception:
            payload, verified = json.loads(body), False
        run_id = str(payload.get("run_id", ""))
        status = 200
        if run_id in self.fail_once:
            self.fail_once.discard(run_id)
            status = 500
        self.deliveries.append(Delivery(headers.get("webhook-id", ""), run_id, verified, status, time.time()))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))  # 0 the first time: kernel-chosen, then kept
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(self, log_level="warning", lifespan="off"))
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        wait_until(lambda: server.started, 10, "the webhook receiver")  # its shutdown closes sock

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None


# --- results ----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    scale: str
    seed: int
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0
    date: str = ""
    commit: str = ""

    def check(self, condition: bool, message: str) -> bool:
        """Record `message` as a failure unless `condition` holds."""
        if not condition:
            self.failures.append(message)
        return condition

    @property
    def status(self) -> str:
        if self.failures:
            return "FAIL"
        return "SKIP" if self.skipped else "PASS"

    def summary(self) -> str:
        return ", ".join(f"{key}={_show(value)}" for key, value in self.figures.items())

    def line(self) -> str:
        head = f"{self.status} {self.name} [scale={self.scale} seed={self.seed} {self.seconds:.0f}s]"
        if self.skipped:
            return f"{head} {self.skipped}"
        tail = "".join(f"\n  - {failure}" for failure in self.failures)
        return f"{head} {self.summary()}{tail}"

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}-{self.scale}.json"
        path.write_text(json.dumps({**asdict(self), "status": self.status}, indent=2) + "\n")
        return path


def _show(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


Scenario = Callable[[str, int], Result]


def execute(scenario: Scenario, scale: str, seed: int) -> Result:
    """Run one scenario, time it, stamp it, print its line, write its JSON."""
    started = time.monotonic()
    result = scenario(scale, seed)
    result.seconds = round(time.monotonic() - started, 1)
    result.date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    result.commit = _commit()
    print(result.line(), flush=True)
    result.write()
    return result


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=SCALES, default="fast", help="fast: 10x smaller (default)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return parser.parse_args(argv)


def main(scenario: Scenario, description: str, argv: list[str] | None = None) -> int:
    args = parse_args(argv, description)
    return 1 if execute(scenario, args.scale, args.seed).status == "FAIL" else 0
