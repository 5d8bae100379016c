"""Start, wait for and stop the servers under test, each as its own pinned subprocess.

`cortex serve` gets a fresh SQLite run store in a new temporary directory on every start (removed
when it stops), so async runs never see an earlier start's runs.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APP_DIR = BENCH_DIR / "apps" / "trivial"
VENV_BIN = REPO_DIR / ".venv" / "bin"

SERVER_CPU = "0"
LOAD_CPU = "1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Pending async runs allowed before a submit answers 429 (default 1,000): lifted so the submit
# load measures how fast runs are accepted, not how fast the backlog drains. Sync calls never
# reach it (64 connections stay far below replica_concurrency = 1000).
MAX_QUEUE = 10_000_000
STORE_FILE = "runs.db"


class ServerStartError(Exception):
    """A server under test did not answer GET /health with 200 in time."""


@dataclass(frozen=True)
class Variant:
    """A server under test: how to start it and the URL prefix its functions live under."""

    name: str
    label: str
    prefix: str
    async_runs: bool = False  # has `?async=true` and /runs (needs a run store)

    def command(self, port: int, store: Path | None = None) -> list[str]:
        script = BASELINE_SCRIPTS.get(self.name)
        if script is not None:
            return [sys.executable, str(BENCH_DIR / script), "--port", str(port)]
        command = [*cortex_cli(), "serve", str(APP_DIR), "--host", "127.0.0.1", "--port", str(port)]
        return command if store is None else [*command, "--store", f"sqlite:///{store}"]


# The baselines Cortex is compared with, each a script taking --port; any other variant is cortex.
BASELINE_SCRIPTS = {"raw": "raw_starlette.py", "asgi": "raw_asgi.py"}
VARIANTS = {
    "raw": Variant("raw", "raw Starlette", "/v4/p-local/bench"),
    "asgi": Variant("asgi", "bare ASGI", "/v4/p-local/bench"),
    "cortex": Variant("cortex", "cortex serve", "/v4/p-local/bench", async_runs=True),
}


@dataclass
class Server:
    variant: Variant
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    store_path: Path | None = None  # the run store's SQLite file (cortex only)
    ready_s: float = 0.0


def cortex_cli() -> list[str]:
    """The `cortex` entry point of the repo's virtualenv, else `python -m cortex`."""
    script = VENV_BIN / "cortex"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cortex"]


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(command: list[str], cpu: str) -> list[str]:
    """Prefix `taskset -c CPU` when this machine has taskset and at least two CPUs."""
    return ["taskset", "-c", cpu, *command] if can_pin() else command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(variant: Variant) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CORTEX_PROJECT_ID", "p-local")
    env["PYTHONUNBUFFERED"] = "1"
    if variant.async_runs:
        env["CORTEX_MAX_QUEUE"] = str(MAX_QUEUE)
        # Given, so the server does not create bench/apps/trivial/.cortex/webhook_secret.
        env.setdefault("CORTEX_WEBHOOK_SECRET", "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    return env


def start(variant: Variant) -> Server:
    port = free_port()
    prefix = f"bench-{variant.name}-"
    store = Path(tempfile.mkdtemp(prefix="bench-store-")) / STORE_FILE if variant.async_runs else None
    with tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            pinned(variant.command(port, store), SERVER_CPU),
            cwd=REPO_DIR,
            env=_server_env(variant),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(variant, process, f"http://127.0.0.1:{port}", Path(log.name), store)


def _log_tail(server: Server, lines: int = 15) -> str:
    text = server.log_path.read_text(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _is_healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> float:
    """Poll GET /health until 200; return the seconds it took. Raise if the server dies first."""
    started = time.perf_counter()
    deadline = started + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() < deadline:
            if server.process.poll() is not None:
                raise ServerStartError(
                    f"{server.variant.label} exited with code {server.process.returncode} "
                    f"before it was ready:\n{_log_tail(server)}"
                )
            if _is_healthy(client, f"{server.base_url}/health"):
                return time.perf_counter() - started
            time.sleep(0.05)
    raise ServerStartError(
        f"{server.variant.label} did not answer GET /health with 200 within {timeout:.0f} s:\n"
        f"{_log_tail(server)}"
    )


def stop(server: Server, timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate the server by PID, kill it if it has not exited after `timeout` seconds."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    server.log_path.unlink(missing_ok=True)
    if server.store_path is not None:
        shutil.rmtree(server.store_path.parent, ignore_errors=True)


@contextmanager
def serving(variant: Variant) -> Iterator[Server]:
    """Start `variant`, wait until it is ready, yield it, and always stop it."""
    server = start(variant)
    try:
        server.ready_s = wait_ready(server)
        yield server
    finally:
        stop(server)
