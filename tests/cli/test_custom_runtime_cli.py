"""`cortex serve` on a custom runtime as a user runs it: start, drain on SIGTERM, never orphan."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import httpx

from tests.conftest import run_cortex, wait_for
from tests.custom_apps import custom_app_copy

APP = "custom-asgi"


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded: they are dead, only unreaped)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def app_process(url: str) -> tuple[int, int]:
    """(pid, process group) of the app's server, as it reports itself."""
    pid = httpx.post(f"{url}/v4/p-local/{APP}/predict", json={}).json()["pid"]
    return pid, os.getpgid(pid)


def test_serve_proxies_and_prints_where_calls_go(cortex_process, tmp_path: Path) -> None:
    server = cortex_process("serve", str(custom_app_copy(tmp_path)), "--port", "0")
    url = server.wait_ready()
    port = re.search(r"port = (\d+)", (tmp_path / "app" / "cerebrium.toml").read_text())
    assert port is not None
    line = server.wait_for_line(r"forwarded to (http://127\.0\.0\.1:\d+)/<path>")
    assert line.group(1) == f"http://127.0.0.1:{port.group(1)}"
    response = httpx.post(f"{url}/v4/p-local/{APP}/predict", json={"a": 1})
    assert response.json()["echo"] == {"a": 1}
    assert httpx.get(f"{url}/ready").json()["status"] == "ready"


def test_sigterm_lets_in_flight_calls_finish_then_stops_the_app(cortex_process, tmp_path: Path) -> None:
    server = cortex_process("serve", str(custom_app_copy(tmp_path)), "--port", "0")
    url = server.wait_ready()
    pid, group = app_process(url)
    results: list[httpx.Response] = []
    call = threading.Thread(
        target=lambda: results.append(httpx.get(f"{url}/v4/p-local/{APP}/slow?seconds=2", timeout=30))
    )
    call.start()
    wait_for(lambda: server.proc.poll() is None, 1, "cortex")
    threading.Event().wait(0.5)  # the call is in flight
    os.kill(server.proc.pid, signal.SIGTERM)
    call.join(timeout=30)
    assert results and results[0].status_code == 200, results
    assert results[0].json() == {"slept": True}
    assert server.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it got
    wait_for(lambda: not group_members(group), 10, f"the app's process group {group} to be gone")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_no_orphan_when_cortex_is_killed_with_sigkill(cortex_process, tmp_path: Path) -> None:
    server = cortex_process("serve", str(custom_app_copy(tmp_path)), "--port", "0")
    url = server.wait_ready()
    _, group = app_process(url)
    assert group_members(group)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.wait(timeout=10)
    wait_for(lambda: not group_members(group), 15, f"the app's process group {group} to be gone")


def test_a_dockerfile_only_app_is_explained(tmp_path: Path) -> None:
    app = tmp_path / "docker-app"
    app.mkdir()
    (app / "cerebrium.toml").write_text(
        '[cerebrium.deployment]\nname = "docker-app"\n\n'
        '[cerebrium.runtime.custom]\ndockerfile_path = "./Dockerfile"\nport = 8080\n'
    )
    result = run_cortex("serve", str(app), "--port", "0")
    assert result.returncode == 1
    assert "dockerfile_path = './Dockerfile'" in result.stderr
    assert "cortex build" in result.stderr and "docker run -p 8080:8080" in result.stderr
    assert "entrypoint = " in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dockerfile_app_with_an_entrypoint_is_served_directly(cortex_process, tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path)
    toml = app / "cerebrium.toml"
    toml.write_text(
        toml.read_text().replace(
            "[cerebrium.runtime.custom]", '[cerebrium.runtime.custom]\ndockerfile_path = "Dockerfile"'
        )
    )
    server = cortex_process("serve", str(app), "--port", "0")
    url = server.wait_ready()
    assert server.wait_for_line(r"note: .*runs its entrypoint directly")
    assert httpx.post(f"{url}/v4/p-local/{APP}/predict", json={}).status_code == 200


def test_an_entrypoint_that_is_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path)
    toml = app / "cerebrium.toml"
    toml.write_text(
        re.sub(r"entrypoint = \[.*\]", 'entrypoint = ["no-such-server", "main:app"]', toml.read_text())
    )
    result = run_cortex("serve", str(app), "--port", "0", timeout=60)
    assert result.returncode == 1
    assert "no-such-server" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_app_that_exits_at_start_shows_its_last_lines(tmp_path: Path) -> None:
    app = custom_app_copy(tmp_path)
    toml = app / "cerebrium.toml"
    command = '["python", "-c", "import sys; print(\'model weights missing\'); sys.exit(3)"]'
    toml.write_text(re.sub(r"entrypoint = \[.*\]", f"entrypoint = {command}", toml.read_text()))
    result = run_cortex("serve", str(app), "--port", "0", timeout=60)
    assert result.returncode == 1
    assert "model weights missing" in result.stderr + result.stdout
    assert "3" in result.stderr
    assert "Traceback" not in result.stderr
