"""What the child is started with, and how a failure to start is told (pure, but for lookups)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from cortex.config import CONFIG_FILE

ENTRYPOINT_KEY = "[cerebrium.runtime.custom] entrypoint"


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """os.environ + `extra`, unbuffered Python output, and cortex's virtualenv first on PATH.

    The app's dependencies are installed where cortex is (as in the image on Cerebrium), so
    `uvicorn` or `python` in the entrypoint must be that environment's even when it is not
    activated. A PATH given in `extra` is used as it is.
    """
    env = {"PYTHONUNBUFFERED": "1", **os.environ, **extra}
    path = env.get("PATH", os.defpath)
    scripts = str(Path(sys.executable).parent)
    if "PATH" not in extra and sys.prefix != sys.base_prefix and scripts not in path.split(os.pathsep):
        path = os.pathsep.join([scripts, path]) if path else scripts
    env["PATH"] = path
    return env


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def resolve_program(program: str, app_dir: Path, path: str) -> Path | None:
    """Find `program` as a shell would: a name on PATH, a path against the app directory."""
    if os.sep in program or (os.altsep and os.altsep in program):
        candidate = app_dir / program  # an absolute program stays as it is
        return candidate if _is_executable(candidate) else None
    for folder in path.split(os.pathsep):
        candidate = app_dir / (folder or ".") / program  # an empty entry is the working directory
        if _is_executable(candidate):
            return candidate
    return None


def describe_missing_program(entrypoint: tuple[str, ...], app_dir: Path, path: str) -> str:
    program, rest = entrypoint[0], list(entrypoint[1:])
    where = f"{app_dir / CONFIG_FILE}: {ENTRYPOINT_KEY}"
    if os.sep in program:
        target = app_dir / program
        if target.is_file():
            return (
                f"{where}: {target} is not executable. Make it executable (chmod +x {program}) "
                f'or start it through its interpreter, e.g. ["sh", "{program}"].'
            )
        return (
            f"{where}: {target} does not exist. Relative paths are resolved against the app "
            f"directory ({app_dir}); fix the path."
        )
    problem = f"{where}: '{program}' was not found on PATH ({path})."
    if _is_python_module(program):
        suggestion = json.dumps(["python", "-m", program, *rest])
        return f"{problem} {program} is installed as a Python module: use entrypoint = {suggestion}"
    return (
        f"{problem} Install it (a Python package goes under [cerebrium.dependencies.pip]) or give "
        "its full path."
    )


def _is_python_module(name: str) -> bool:
    import importlib.util

    if not name.isidentifier():
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"
