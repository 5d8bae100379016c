"""`cortex serve --env-file`: secrets loaded before main.py is imported; APP_NAME and PROJECT_ID set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cortex.environment import load_env_file, set_app_identity
from tests.conftest import APPS, run_cortex


def test_env_file_values_reach_the_app_and_the_shell_wins(
    cortex_process: Callable[..., Any], tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# secrets\nIMPORT_TIME_SECRET=s3cret\nexport QUOTED='a b # c'\nFROM_SHELL=file\n", encoding="utf-8"
    )
    process = cortex_process(
        "serve",
        str(APPS / "environ"),
        "--port",
        "0",
        "--project-id",
        "p-env",
        "--env-file",
        str(env_file),
        env={"FROM_SHELL": "shell"},
    )
    url = process.wait_ready()
    names = ["IMPORT_TIME_SECRET", "QUOTED", "FROM_SHELL", "APP_NAME", "PROJECT_ID"]
    base = f"{url}/v4/p-env/environ-app"
    reply = httpx.post(f"{base}/env", json={"names": names}, timeout=10)
    assert reply.json()["result"] == {
        "IMPORT_TIME_SECRET": "s3cret",
        "QUOTED": "a b # c",
        "FROM_SHELL": "shell",
        "APP_NAME": "environ-app",
        "PROJECT_ID": "p-env",
    }
    assert httpx.post(f"{base}/at_import", timeout=10).json()["result"] == "s3cret"


def test_app_name_and_project_id_are_set_without_an_env_file(cortex_process: Callable[..., Any]) -> None:
    process = cortex_process(
        "serve", str(APPS / "environ"), "--port", "0", env={"APP_NAME": "stale", "PROJECT_ID": "stale"}
    )
    url = process.wait_ready()
    reply = httpx.post(
        f"{url}/v4/p-local/environ-app/env", json={"names": ["APP_NAME", "PROJECT_ID"]}, timeout=10
    )
    assert reply.json()["result"] == {"APP_NAME": "environ-app", "PROJECT_ID": "p-local"}


def test_a_missing_env_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    result = run_cortex("serve", str(APPS / "environ"), "--port", "0", "--env-file", str(missing))
    assert result.returncode == 1
    assert f"Error: --env-file {missing}: no such file. Create it or drop the option." in result.stderr


def test_load_env_file_sets_only_unset_names(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("A=1\nB=2\nBARE\n", encoding="utf-8")
    environ = {"B": "kept"}
    assert load_env_file(env_file, environ) == ["A"]
    set_app_identity("app", "p-1", environ)
    assert environ == {"A": "1", "B": "kept", "APP_NAME": "app", "PROJECT_ID": "p-1"}
