"""`cortex serve` logs: text or JSON lines, the run id on the app's own output, DISABLE_*_LOGS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import CortexProcess, wait_for

CHATTY = Path(__file__).parent.parent / "apps" / "chatty"
BASE = "/v4/p-local/chatty"


def _start(cortex_process: Callable[..., CortexProcess], tmp_path: Path, *flags: str, **env: str) -> Any:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    return cortex_process("serve", str(CHATTY), "--port", "0", "--store", store, *flags, env=env)


def _call(url: str, function: str, body: dict[str, Any], **kwargs: Any) -> str:
    response = httpx.post(f"{url}{BASE}/{function}", json=body, timeout=10, **kwargs)
    assert response.status_code in (200, 202), response.text
    run_id: str = response.headers["x-request-id"]
    return run_id


def _records(process: CortexProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.lines if line.startswith("{")]


def test_text_lines_written_during_a_call_carry_its_run_id(cortex_process: Any, tmp_path: Path) -> None:
    process = _start(cortex_process, tmp_path)
    url = process.wait_ready()
    sync_id = _call(url, "talk", {"word": "hi"})
    async_id = _call(url, "atalk", {"word": "yo"})
    stream_id = _call(url, "chatter", {"n": 2}, headers={"accept": "text/event-stream"})
    process.wait_for_line(r"chatter 200 [\d.]+ms")
    for line in (
        f"[{sync_id}] sync says hi",
        f"[{sync_id}] no newline yet - now done",  # a line written in pieces stays one line
        f"[{sync_id}] sync warns hi",  # sys.stderr too
        f"[{async_id}] async says yo",
        f"[{stream_id}] chunk 1",  # a sync generator's body runs in a worker thread
    ):
        assert line in process.lines, process.output
    for pattern in (
        rf"INFO +\[{sync_id}\] sync logs hi$",  # the app's logging, through the root logger
        rf"WARNING +\[{async_id}\] async logs yo$",
        rf"INFO +\[{stream_id}\] stream done$",
        rf"INFO +\[{sync_id}\] talk 200 [\d.]+ms$",  # the per-call line
    ):
        process.wait_for_line(pattern, timeout=5)
    assert "imported chatty" in process.lines  # printed outside any call: untouched


def test_json_format_writes_one_record_per_line_with_run_ids(cortex_process: Any, tmp_path: Path) -> None:
    process = _start(cortex_process, tmp_path, "--log-format", "json")
    process.wait_for_line(r'"message": "Ready\.')
    url = process.url()
    run_id = _call(url, "talk", {"word": "hi"})
    process.wait_for_line(r'"logger": "cortex.response"')
    assert all(line.startswith("{") for line in process.lines if line), process.output
    mine = [r for r in _records(process) if r.get("run_id") == run_id]
    by_message = {r["message"]: r for r in mine}
    assert by_message["sync says hi"]["logger"] == "stdout"
    assert by_message["sync warns hi"]["logger"] == "stderr"
    assert by_message["sync logs hi"]["logger"] == "chatty"
    assert by_message["sync logs hi"]["level"] == "INFO"
    call = next(r for r in mine if r["logger"] == "cortex.response")
    assert call["function"] == "talk" and call["status"] == 200 and call["duration_ms"] > 0
    assert set(call) >= {"ts", "level", "logger", "message", "run_id"}
    assert call["ts"].endswith("Z")
    started = [r for r in _records(process) if r["logger"].startswith("uvicorn")]
    assert started and all("run_id" not in r for r in started)  # uvicorn's own lines, as JSON


def test_env_var_selects_json_and_async_runs_log_their_run_id(cortex_process: Any, tmp_path: Path) -> None:
    process = _start(cortex_process, tmp_path, CORTEX_LOG_FORMAT="json")
    process.wait_for_line(r'"message": "Ready\.')
    run_id = _call(process.url(), "talk", {"word": "later"}, params={"async": "true"})

    def finished() -> list[dict[str, Any]]:
        return [r for r in _records(process) if r.get("run_id") == run_id and r.get("status") == "completed"]

    wait_for(finished, 10, "the async run's log line")
    messages = {r["message"] for r in _records(process) if r.get("run_id") == run_id}
    assert {"sync says later", "sync logs later"} <= messages


def test_disable_response_and_request_logs(cortex_process: Any, tmp_path: Path) -> None:
    env = {"DISABLE_RESPONSE_LOGS": "true", "DISABLE_REQUEST_LOGS": "TRUE"}
    process = _start(cortex_process, tmp_path, "--debug", "--access-log", **env)
    url = process.wait_ready()
    run_id = _call(url, "talk", {"word": "quiet"})
    process.wait_for_line(rf"\[{run_id}\] sync logs quiet")  # the app's own logs stay
    process.stop()
    assert not any("talk 200" in line for line in process.lines), process.output
    assert not any("bytes in" in line or '"POST /v4/' in line for line in process.lines)


def test_request_log_with_debug_and_response_log_by_default(cortex_process: Any, tmp_path: Path) -> None:
    process = _start(cortex_process, tmp_path, "--debug", DISABLE_RESPONSE_LOGS="no")
    url = process.wait_ready()
    run_id = _call(url, "talk", {"word": "loud"})
    process.wait_for_line(rf"DEBUG +\[{run_id}\] talk\(\): 15 bytes in$", timeout=5)
    process.wait_for_line(rf"\[{run_id}\] talk 200 ", timeout=5)
