"""The app's environment: secrets from an --env-file, and APP_NAME / PROJECT_ID as on Cerebrium."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from cortex.errors import ServeError


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a dotenv file (comments, quotes, `export` as python-dotenv reads them)."""
    from dotenv import dotenv_values  # installed with uvicorn[standard]

    if not path.is_file():
        raise ServeError(f"--env-file {path}: no such file. Create it or drop the option.")
    try:
        values = dotenv_values(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--env-file {path}: cannot be read: {exc}") from exc
    return {key: value for key, value in values.items() if value is not None}  # `KEY` alone: unset


def load_env_file(path: Path, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the file's variables that are not set yet (the shell wins, so one secret can be
    overridden per run); returns the names it set."""
    env = os.environ if environ is None else environ
    loaded = []
    for key, value in read_env_file(path).items():
        if key not in env:
            env[key] = value
            loaded.append(key)
    return loaded


def set_app_identity(app_name: str, project_id: str, environ: MutableMapping[str, str] | None = None) -> None:
    """APP_NAME and PROJECT_ID, as Cerebrium sets them; always those of the app being served."""
    env = os.environ if environ is None else environ
    env["APP_NAME"] = app_name
    env["PROJECT_ID"] = project_id
