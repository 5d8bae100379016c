"""The custom runtime's child process: start, readiness, restarts, stop, and no orphans, for real."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cortex.config import load_config
from cortex.custom.guard import USAGE_EXIT, group_members, parse_listening
from cortex.custom.supervisor import CustomRuntimeError, Supervisor
from tests.conftest import REPO, wait_for
from tests.custom_apps import custom_app_copy, free_port

# Listens on $PORT, ignores SIGTERM and starts a grandchild in its process group.
STUBBORN = """\
import os, signal, socket, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM, staying", flush=True))
helper = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
server = socket.socket()
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen()
print("listening", flush=True)
time.sleep(120)
"""

# A stand-in for `cortex serve`: starts a Supervisor, prints the app's process group, waits.
PARENT = """\
import asyncio, json, sys
from pathlib import Path
from cortex.config import load_config
from cortex.custom.guard import group_members
from cortex.custom.supervisor import Supervisor

async def main():
    app = Path(sys.argv[1])
    runtime = load_config(app).config.runtime.custom
    supervisor = Supervisor(app, runtime, {"PORT": str(runtime.port)}, 20, float(sys.argv[2]))
    await supervisor.start()
    await supervisor.wait_ready()
    await asyncio.sleep(0.3)  # the stubborn app's grandchild is started before it listens
    print(json.dumps(group_members(supervisor.pid)), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def supervisor_for(
    app: Path,
    lines: list[str] | None = None,
    init_timeout: float = 20,
    grace: float = 5,
    env: dict[str, str] | None = None,
    **options: Any,
) -> Supervisor:
    runtime = load_config(app).config.runtime.custom
    assert runtime is not None
    base = {"PORT": str(runtime.port), "APP_NAME": "custom-asgi", "PROJECT_ID": "p-test"}
    sink = lines.append if lines is not None else None
    return Supervisor(app, runtime, {**base, **(env or {})}, init_timeout, grace, sink, **options)


def run(supervisor: Supervisor, body: Callable[[], Awaitable[Any]] | None = None) -> Any:
    """start(), wait_ready(), then `body()`; stop() whatever happens."""

    async def main() -> Any:
        try:
            await supervisor.start()
            await supervisor.wait_ready()
            return None if body is None else await body()
        finally:
            await supervisor.stop()

    return asyncio.run(main())


async def until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def predict(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(f"http://127.0.0.1:{port}/predict", json={"x": 1})
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def is_gone(pid: int) -> bool:
    """Exited (a zombie has exited too: only its parent's wait() is missing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture
def supervisor_log() -> Iterator[list[str]]:
    """What the supervisor logs (logger cortex.custom), as formatted messages."""
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("cortex.custom")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_the_app_starts_in_its_group_with_port_app_name_and_project_id(tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path)
    supervisor = supervisor_for(app)
    assert supervisor.state == "new" and not supervisor.ready

    async def check() -> dict[str, Any]:
        assert supervisor.ready and supervisor.state == "ready"
        answer = await predict(supervisor.port)
        assert os.getpgid(answer["pid"]) == supervisor.pid  # the guard leads the app's group
        assert os.getsid(answer["pid"]) == supervisor.pid
        return answer

    answer = run(supervisor, check)
    assert answer["env"] == {"PORT": str(supervisor.port), "APP_NAME": "custom-asgi", "PROJECT_ID": "p-test"}
    assert supervisor.state == "stopped" and not supervisor.ready and supervisor.restarts == 0


def test_ready_stays_false_until_the_readiness_endpoint_answers_200(tmp_path: Path) -> None:
    supervisor = supervisor_for(custom_app_copy(tmp_path), env={"READY_AFTER": "2"})

    async def main() -> float:
        try:
            started = time.monotonic()
            await supervisor.start()
            await asyncio.sleep(1.2)
            assert not supervisor.ready and supervisor.state == "starting"
            async with httpx.AsyncClient(trust_env=False) as client:  # it is up, only not ready
                response = await client.get(f"http://127.0.0.1:{supervisor.port}/ready")
                assert response.status_code == 503
            await supervisor.wait_ready()
            assert supervisor.ready
            return time.monotonic() - started
        finally:
            await supervisor.stop()

    assert asyncio.run(main()) >= 2


def test_without_endpoints_a_tcp_connection_is_the_probe(tmp_path: Path) -> None:
    # /ready would answer 503 for a minute: only a TCP probe can find this app ready.
    app = custom_app_copy(tmp_path, healthcheck_endpoint="", readycheck_endpoint="")
    supervisor = supervisor_for(app, env={"READY_AFTER": "60"}, health_interval=0.2)

    async def healthy_for_a_while() -> None:
        await asyncio.sleep(1)
        assert supervisor.ready and supervisor.restarts == 0

    run(supervisor, healthy_for_a_while)


def test_an_entrypoint_not_on_path_fails_at_start_and_suggests_python_m(tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path, entrypoint=["uvicorn", "main:app", "--port", "{port}"])
    supervisor = supervisor_for(app, env={"PATH": "/nonexistent/bin"})
    with pytest.raises(CustomRuntimeError) as caught:
        asyncio.run(supervisor.start())
    port = supervisor.port
    assert caught.value.message == (
        f"{app / 'cerebrium.toml'}: [cerebrium.runtime.custom] entrypoint: 'uvicorn' was not found "
        "on PATH (/nonexistent/bin). uvicorn is installed as a Python module: use entrypoint = "
        f'["python", "-m", "uvicorn", "main:app", "--port", "{port}"]'
    )
    assert supervisor.pid is None


def test_an_unknown_program_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path, entrypoint=["no-such-server", "main:app"])
    supervisor = supervisor_for(app, env={"PATH": "/nonexistent/bin:/also-missing"})
    with pytest.raises(CustomRuntimeError) as caught:
        asyncio.run(supervisor.start())
    assert caught.value.message == (
        f"{app / 'cerebrium.toml'}: [cerebrium.runtime.custom] entrypoint: 'no-such-server' was not "
        "found on PATH (/nonexistent/bin:/also-missing). Install it (a Python package goes under "
        "[cerebrium.dependencies.pip]) or give its full path."
    )


def test_a_relative_program_is_found_in_the_app_directory(tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path, entrypoint=["./serve.sh"], readycheck_endpoint="")
    script = app / "serve.sh"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m uvicorn main:app --port "$PORT"\n')
    script.chmod(0o755)
    run(supervisor_for(app, env={"PATH": "/nonexistent/bin"}))


def test_an_app_that_exits_at_start_reports_its_code_and_last_lines(tmp_path: Path) -> None:
    command = "import sys; print('boom'); sys.exit(3)"
    app = custom_app_copy(tmp_path, entrypoint=["python", "-c", command])
    supervisor = supervisor_for(app)
    with pytest.raises(CustomRuntimeError) as caught:
        run(supervisor)
    assert caught.value.message == (
        f"The app's entrypoint (python -c 'import sys; print('\"'\"'boom'\"'\"'); sys.exit(3)') exited "
        f"with code 3 before it was ready. Its last lines:\n  boom\nFix what it reports, or run the "
        f"entrypoint yourself in {app.resolve()} to see why it stops."
    )
    assert supervisor.state == "stopped"


def test_an_app_listening_on_another_port_is_named_within_init_timeout(tmp_path: Path) -> None:
    other = free_port()
    entrypoint = ["python", "-m", "uvicorn", "main:app", "--port", str(other)]
    supervisor = supervisor_for(custom_app_copy(tmp_path, entrypoint=entrypoint), init_timeout=3)
    started = time.monotonic()
    with pytest.raises(CustomRuntimeError) as caught:
        run(supervisor)
    assert time.monotonic() - started < 3 + 2
    assert caught.value.message == (
        f"The app did not open port {supervisor.port} within 3 s ([cerebrium.deployment] "
        f"deployment_initialization_timeout): the app listens on 127.0.0.1:{other} but "
        f"cerebrium.toml says port = {supervisor.port}. Make [cerebrium.runtime.custom] port and "
        f"the port the entrypoint listens on the same (PORT={supervisor.port} is in its environment)."
    )


def test_a_readiness_endpoint_that_never_answers_200_is_reported(tmp_path: Path) -> None:
    supervisor = supervisor_for(custom_app_copy(tmp_path), init_timeout=2, env={"READY_AFTER": "60"})
    with pytest.raises(CustomRuntimeError) as caught:
        run(supervisor)
    assert caught.value.message.startswith(
        f"The app opened port {supervisor.port} but GET /ready did not answer 200 within 2 s "
        "([cerebrium.deployment] deployment_initialization_timeout); it last answered 503 'warming up'. "
        "Make /ready answer 200 once the app can serve, or raise deployment_initialization_timeout."
    )


def test_a_port_already_in_use_fails_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = custom_app_copy(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(CustomRuntimeError, match=r"is already in use by another process"):
            asyncio.run(supervisor_for(app).start())


def test_a_crashed_app_is_restarted_with_a_new_pid(tmp_path: Path, supervisor_log: list[str]) -> None:
    supervisor = supervisor_for(custom_app_copy(tmp_path))

    async def crash_and_recover() -> tuple[int, int]:
        before = (await predict(supervisor.port))["pid"]
        async with httpx.AsyncClient(trust_env=False) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{supervisor.port}/crash")
        await until(lambda: not supervisor.ready, 5, "the crash to be noticed")
        await until(lambda: supervisor.ready, 15, "the restarted app")
        return before, (await predict(supervisor.port))["pid"]

    before, after = run(supervisor, crash_and_recover)
    assert after != before
    assert supervisor.restarts == 1
    assert "[custom-asgi] The app exited with code 3; restarting it in 1 s." in supervisor_log
    assert "[custom-asgi] restarted and ready again (restart 1)." in supervisor_log


def test_three_failed_health_checks_restart_the_app(tmp_path: Path, supervisor_log: list[str]) -> None:
    supervisor = supervisor_for(custom_app_copy(tmp_path, healthcheck_endpoint="/fail"), health_interval=0.2)

    async def until_restarted() -> None:
        first = supervisor.pid
        await until(lambda: supervisor.restarts >= 1 and supervisor.ready, 15, "a restart")
        assert supervisor.pid != first

    run(supervisor, until_restarted)
    answer = """answered 418 '{"detail":"the app\\'s own error"}'"""
    assert f"[custom-asgi] health check GET /fail failed (1/3): {answer}" in supervisor_log
    assert (
        f"[custom-asgi] The app failed its health check GET /fail 3 times in a row ({answer}); "
        "restarting it in 1 s."
    ) in supervisor_log


def test_stop_sends_sigterm_to_the_group_and_returns_once_it_is_gone(tmp_path: Path) -> None:
    entrypoint = ["python", "-m", "uvicorn", "main:app", "--port", "{port}", "--log-level", "info"]
    lines: list[str] = []
    supervisor = supervisor_for(custom_app_copy(tmp_path, entrypoint=entrypoint), lines, grace=10)
    group: list[int] = []

    async def record_group() -> None:
        group.extend(group_members(supervisor.pid or 0) or [])

    started = time.monotonic()
    run(supervisor, record_group)
    assert time.monotonic() - started < 10
    assert len(group) == 2  # the guard and uvicorn
    assert all(is_gone(pid) for pid in group)
    assert any("Shutting down" in line for line in lines)  # uvicorn's answer to SIGTERM
    assert any("Uvicorn running on" in line for line in lines)  # its output reached log_line
    asyncio.run(supervisor.stop())  # idempotent


def test_stop_kills_an_app_that_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    app = custom_app_copy(
        tmp_path, entrypoint=["python", "stubborn.py"], healthcheck_endpoint="", readycheck_endpoint=""
    )
    (app / "stubborn.py").write_text(STUBBORN)
    lines: list[str] = []
    supervisor = supervisor_for(app, lines, grace=1)
    group: list[int] = []

    async def record_group() -> None:
        await asyncio.sleep(0.2)
        group.extend(group_members(supervisor.pid or 0) or [])

    async def main() -> float:
        await supervisor.start()
        await supervisor.wait_ready()
        await record_group()
        stopping = time.monotonic()
        await supervisor.stop()
        return time.monotonic() - stopping

    took = asyncio.run(main())
    assert 1 <= took < 3
    assert len(group) == 3  # the guard, the app and its helper
    assert all(is_gone(pid) for pid in group)
    assert "got SIGTERM, staying" in lines


@pytest.mark.parametrize("stubborn", [False, True], ids=["uvicorn", "ignores-sigterm"])
def test_no_process_of_the_app_outlives_a_sigkilled_parent(tmp_path: Path, stubborn: bool) -> None:
    if stubborn:
        app = custom_app_copy(
            tmp_path, entrypoint=["python", "stubborn.py"], healthcheck_endpoint="", readycheck_endpoint=""
        )
        (app / "stubborn.py").write_text(STUBBORN)
    else:
        app = custom_app_copy(tmp_path)
    (tmp_path / "parent.py").write_text(PARENT)
    with subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), str(app), "1"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as parent:
        try:
            assert parent.stdout is not None
            group = json.loads(parent.stdout.readline())
            assert len(group) == (3 if stubborn else 2)
            assert not any(is_gone(pid) for pid in group)
        finally:
            parent.kill()  # SIGKILL: cortex gets no chance to clean up
    wait_for(lambda: all(is_gone(pid) for pid in group), timeout=8, what=f"{group} to exit")


def test_the_guard_starts_nothing_when_its_parent_is_already_gone(tmp_path: Path) -> None:
    """The fork/prctl race: a parent dead before PR_SET_PDEATHSIG would never signal the guard."""
    marker = tmp_path / "started"
    guard = REPO / "cortex" / "custom" / "guard.py"
    command = [sys.executable, "-I", str(guard), "--parent", "1", "--kill-after", "1", "--"]
    result = subprocess.run([*command, "/bin/sh", "sh", "-c", f"touch {marker}"], timeout=10)
    assert result.returncode == 1
    assert not marker.exists()
    usage = subprocess.run([sys.executable, "-I", str(guard)], capture_output=True, timeout=10)
    assert usage.returncode == USAGE_EXIT


def test_the_guard_exits_as_its_child_did(tmp_path: Path) -> None:
    guard = REPO / "cortex" / "custom" / "guard.py"
    command = [sys.executable, "-I", str(guard), "--parent", str(os.getpid()), "--kill-after", "1", "--"]
    assert subprocess.run([*command, "/bin/sh", "sh", "-c", "exit 7"], timeout=10).returncode == 7
    killed = subprocess.run([*command, "/bin/sh", "sh", "-c", "kill -KILL $$"], timeout=10)
    assert killed.returncode == -signal.SIGKILL


def test_listen_sockets_are_read_from_proc_net_tables() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:2001 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 4242 1\n"
        "   1: 0100007F:2001 0100007F:C350 01 00000000:00000000 00:00000000 00000000  0 0 4243 1\n"
    )
    tcp6 = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000  0 0 777 1\n"
    )
    assert parse_listening(tcp) == [("4242", "127.0.0.1:8193")]
    assert parse_listening(tcp6) == [("777", "[::]:8080")]
