"""`cortex serve` as a user runs it: a real subprocess, its output and its exit code."""

from __future__ import annotations

import shutil
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import APPS, EXAMPLES, run_cortex, wait_for


def test_help_explains_every_flag():
    top = run_cortex("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout
    result = run_cortex("serve", "--help")
    assert result.returncode == 0
    for flag in ["--host", "--port", "--project-id", "--reload", "--debug", "--access-log"]:
        assert flag in result.stdout
    assert "127.0.0.1" in result.stdout and "8000" in result.stdout


def test_startup_prints_each_endpoint_with_a_curl_line_and_import_time(cortex_process):
    server = cortex_process("serve", str(EXAMPLES / "hello-world"), "--port", "0")
    url = server.wait_ready()
    assert server.wait_for_line(r"main\.py imported in \d+\.\d\d s; 2 endpoints:")
    curl = server.wait_for_line(r"curl -X POST (\S+)/run .* -d '(.*)'$")
    assert curl.group(1) == f"{url}/v4/p-local/hello-world"
    response = httpx.post(
        f"{curl.group(1)}/run", content=curl.group(2), headers={"content-type": "application/json"}
    )
    assert response.json()["result"] == {"my_result": "hello"}
    greet = server.wait_for_line(r"curl -X POST \S+/greet .* -d '(.*)'$")
    assert greet.group(1) == '{"person": {"name": "hello"}}'


@pytest.mark.parametrize(
    ("example", "function", "body", "expected"),
    [
        ("hello-world", "run", {"prompt": "hi"}, {"my_result": "hi"}),
        (
            "hello-world",
            "greet",
            {"person": {"name": "Ada", "language": "fr"}},
            {"greeting": "Bonjour, Ada!"},
        ),
        ("streaming", "count", {"to": 3, "delay": 0}, [{"count": 1}, {"count": 2}, {"count": 3}]),
    ],
)
def test_every_example_serves_and_answers(cortex_process, example, function, body, expected):
    server = cortex_process("serve", str(EXAMPLES / example), "--port", "0")
    url = server.wait_ready()
    try:
        response = httpx.post(f"{url}/v4/p-local/{example}/{function}", json=body)
    except httpx.ConnectError:
        raise AssertionError(server.output) from None
    assert response.status_code == 200, response.text
    assert response.json()["result"] == expected


def test_streaming_example_streams_tokens(cortex_process):
    server = cortex_process("serve", str(EXAMPLES / "streaming"), "--port", "0")
    url = server.wait_ready()
    response = httpx.post(
        f"{url}/v4/p-local/streaming/tokens",
        json={"prompt": "one two", "delay": 0},
        headers={"accept": "text/event-stream"},
    )
    assert response.text == "data: one\n\ndata: two\n\n"


def test_project_id_flag_changes_the_path(cortex_process):
    server = cortex_process("serve", str(EXAMPLES / "hello-world"), "--port", "0", "--project-id", "p-acme")
    url = server.wait_ready()
    assert httpx.post(f"{url}/v4/p-acme/hello-world/run", json={"prompt": "x"}).status_code == 200
    assert httpx.post(f"{url}/v4/p-local/hello-world/run", json={"prompt": "x"}).status_code == 404


def test_import_error_exits_non_zero_with_the_users_error_and_a_hint(cortex_process):
    server = cortex_process("serve", str(APPS / "import_error"), "--port", "0")
    assert server.wait(30) == 1
    assert (
        "Error: main.py failed to import: No module named 'not_a_real_module'. Add not_a_real_module "
        "under [cerebrium.dependencies.pip] in cerebrium.toml and install it."
    ) in server.lines
    assert "Traceback" not in server.output


def test_exception_at_import_names_type_message_and_line(cortex_process):
    server = cortex_process("serve", str(APPS / "import_raises"), "--port", "0")
    assert server.wait(30) == 1
    assert (
        "Error: main.py failed to import: FileNotFoundError: no model at /models/missing.bin "
        "(main.py, line 5)"
    ) in server.lines
    assert "Traceback" not in server.output


def test_debug_adds_the_traceback(cortex_process):
    server = cortex_process("serve", str(APPS / "import_error"), "--port", "0", "--debug")
    assert server.wait(30) == 1
    assert "Traceback (most recent call last)" in server.output
    assert "ModuleNotFoundError: No module named 'not_a_real_module'" in server.output


def test_invalid_config_exits_non_zero_before_serving():
    result = run_cortex("serve", str(APPS / "bad_toml"), "--port", "0")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: cerebrium.toml: [cerebrium.hardware] gpu_count: Input should be a valid integer, "
        "unable to parse string as an integer (got 'two')\n"
    )


def test_missing_config_says_how_to_create_one(tmp_path):
    result = run_cortex("serve", str(tmp_path), "--port", "0")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: cerebrium.toml not found in {tmp_path}. Create one containing "
        '[cerebrium.deployment] name = "my-app", or run cortex init.\n'
    )


def test_legacy_and_unknown_keys_warn_and_still_serve(cortex_process):
    server = cortex_process("serve", str(APPS / "legacy_toml"), "--port", "0")
    url = server.wait_ready()
    assert (
        "warning: cerebrium.toml: unknown key [cerebrium.scaling] max_replica (did you mean "
        "max_replicas?); ignored."
    ) in server.lines
    assert any(line.startswith("warning: cerebrium.toml: [cerebrium.build]") for line in server.lines)
    assert httpx.post(f"{url}/v4/p-local/legacy/predict", json={"prompt": "ok"}).json()["result"] == "OK"


def test_port_in_use_is_a_clear_error(cortex_process):
    first = cortex_process("serve", str(EXAMPLES / "hello-world"), "--port", "0")
    port = first.url().rsplit(":", 1)[1]
    result = run_cortex("serve", str(EXAMPLES / "hello-world"), "--port", port)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: Cannot listen on 127.0.0.1:{port}: Address already in use.")


def test_sigterm_lets_in_flight_calls_finish_then_exits(cortex_process):
    server = cortex_process("serve", str(APPS / "busy"), "--port", "0")
    url = server.wait_ready()
    results: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{url}/v4/p-local/busy/sleep", json={"seconds": 1.5}, timeout=30)
        )
    )
    caller.start()
    time.sleep(0.5)
    # uvicorn drains, then re-raises SIGTERM so a supervisor sees how the process ended.
    assert server.stop(signal.SIGTERM, timeout=20) == -signal.SIGTERM
    caller.join()
    assert results[0].status_code == 200
    assert results[0].json()["result"] == 1.5
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v4/p-local/busy/sleep", json={"seconds": 0})


def test_reload_serves_a_function_added_while_running(cortex_process, tmp_path):
    app = tmp_path / "app"
    shutil.copytree(EXAMPLES / "hello-world", app)
    server = cortex_process("serve", str(app), "--port", "0", "--reload")
    url = server.wait_ready()
    endpoint = f"{url}/v4/p-local/hello-world/added"
    assert httpx.post(endpoint, json={"x": 1}).status_code == 404
    edited = (app / "main.py").read_text() + "\n\ndef added(x: int):\n    return x + 1\n"
    last_write = [0.0]

    def served() -> httpx.Response | None:
        # uvicorn's file watcher may start a moment after the app is ready: write again
        # (identically) every 2 s until the new function shows up.
        if time.monotonic() - last_write[0] > 2:
            (app / "main.py").write_text(edited)
            last_write[0] = time.monotonic()
        try:
            response = httpx.post(endpoint, json={"x": 1})
        except httpx.TransportError:
            return None  # between the old child and the new one
        return response if response.status_code == 200 else None

    try:
        reloaded = wait_for(served, timeout=20, what="the reloaded function")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; cortex printed:\n{server.output}") from None
    assert reloaded.json()["result"] == 2
