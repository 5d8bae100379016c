"""Shared fixtures: a real uvicorn on a kernel-chosen loopback port, and `cortex` subprocesses."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cortex.app import build_app
from cortex.config import load_config, load_settings
from cortex.http_protocol import connection_options
from cortex.state import ServingState
from tests.redis_server import RedisServer, redis_server_path

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
REPO = TESTS.parent
EXAMPLES = REPO / "examples"
CORTEX = [sys.executable, "-m", "cortex"]
TEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"cortex-tests-webhook-secret-0123").decode()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    base: str  # url + /v4/{project}/{app}
    state: ServingState

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)


@contextmanager
def serving(app_dir: Path, wait_ready: bool = True, **settings: Any) -> Iterator[Served]:
    """Serve an app dir in this process on 127.0.0.1 with a kernel-chosen port."""
    config = load_config(app_dir).config
    scratch = Path(tempfile.mkdtemp(prefix="cortex-store-"))
    settings.setdefault("store", f"sqlite:///{scratch / 'runs.db'}")  # each server its own runs
    settings.setdefault("webhook_secret", TEST_WEBHOOK_SECRET)
    state = ServingState(app_dir, config, load_settings(**settings))
    app = build_app(state)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # kernel-chosen port: parallel tests never collide
    # The same protocol and limits as `cortex serve`, so every e2e test runs through them.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **connection_options(state.settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), timeout=10, what="startup")
    assert server.started, "server exited during startup; see the log above"
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        if wait_ready:
            wait_for(lambda: state.is_ready, timeout=20, what="main.py to import (or the app's server)")
        yield Served(url, url + state.base_path, state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`with serve("echo") as s:` serves tests/apps/echo (or any Path)."""

    def _serve(app: str | Path, **kwargs: Any) -> Any:
        return serving(app if isinstance(app, Path) else APPS / app, **kwargs)

    return _serve


class CortexProcess:
    """`cortex serve` as a real subprocess; the URL is read from what it prints."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*CORTEX, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            for line in self.lines:
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                raise AssertionError(f"cortex exited ({self.proc.returncode}):\n{self.output}")
            return None

        result: re.Match[str] = wait_for(find, timeout, f"a line matching {pattern!r}")
        return result

    def url(self, timeout: float = 30) -> str:
        return self.wait_for_line(r"on (http://127\.0\.0\.1:\d+)", timeout).group(1)

    def wait_ready(self, timeout: float = 30) -> str:
        url = self.url(timeout)
        self.wait_for_line(r"^Ready\.", timeout)
        return url

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.wait(timeout)


@pytest.fixture
def cortex_process() -> Iterator[Callable[..., CortexProcess]]:
    started: list[CortexProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CortexProcess:
        process = CortexProcess(list(args), env, cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(signal.SIGKILL)


def run_cortex(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`cortex ARGS` to completion, output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    return subprocess.run(
        [*CORTEX, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A real HTTP server that records what it is sent; `responses` scripts its status codes."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.responses: list[int] = []  # popped per request; 200 when empty
        self.url = ""

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
        self.received.append(Received(headers, body))
        status = self.responses.pop(0) if self.responses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        wait_for(lambda: len(self.received) >= count, timeout, f"{count} webhook(s)")
        return self.received


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(receiver, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10, what="the webhook receiver")
    receiver.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    yield receiver
    server.should_exit = True
    thread.join(timeout=10)


def _require_redis_server() -> None:
    if redis_server_path() is None:
        pytest.skip(
            "REDIS TESTS SKIPPED: redis-server is not installed. Run `make system-packages` "
            "(or apt-get install redis-server); CI installs it."
        )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One durable redis-server (AOF everysec) shared by the session; see tests/redis_server.py."""
    _require_redis_server()
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """redis://127.0.0.1:PORT/0 on the shared server, emptied (FLUSHALL) for this test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.restart()  # a previous test killed it
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def start_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """`start_redis(["--appendonly", "no"])`: a server of this test's own, stopped after it."""
    _require_redis_server()
    started: list[RedisServer] = []

    def start(args: list[str] | None = None) -> RedisServer:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"), args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
