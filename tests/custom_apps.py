"""Copies of tests/apps/custom_asgi on a free loopback port, with cerebrium.toml keys overridden."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from cortex.config import CustomRuntimeConfig, DeploymentConfig, ScalingConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CUSTOM_ASGI = Path(__file__).parent / "apps" / "custom_asgi"
_SECTIONS = {
    "deployment": DeploymentConfig,
    "runtime.custom": CustomRuntimeConfig,
    "scaling": ScalingConfig,
}
TEMPLATE_PORT = "8192"  # the port tests/apps/custom_asgi/cerebrium.toml names


def free_port() -> int:
    """A loopback port the kernel has just handed out (and taken back), so no fixed ports."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def custom_app_copy(tmp_path: Path, **overrides: Any) -> Path:
    """tmp_path/app: custom_asgi on a free port, with keys of [cerebrium.deployment],
    [cerebrium.runtime.custom] or [cerebrium.scaling] set from `overrides`.

    `port` defaults to a free port, written both as `port =` and in the entrypoint's `--port`;
    "{port}" in an overridden entrypoint (a list, or a string) becomes that port.
    """
    app = tmp_path / "app"
    shutil.copytree(CUSTOM_ASGI, app, ignore=shutil.ignore_patterns("__pycache__"))
    data = tomllib.loads((CUSTOM_ASGI / "cerebrium.toml").read_text())["cerebrium"]
    custom = data["runtime"]["custom"]
    port = int(overrides.pop("port", free_port()))
    custom["port"] = port
    custom["entrypoint"] = [str(port) if part == TEMPLATE_PORT else part for part in custom["entrypoint"]]
    for key, value in overrides.items():
        section = next((name for name, model in _SECTIONS.items() if key in model.model_fields), None)
        if section is None:
            raise TypeError(f"custom_app_copy(): no cerebrium.toml key {key!r} in {list(_SECTIONS)}")
        if key == "entrypoint" and isinstance(value, str):
            value = value.replace("{port}", str(port))
        elif key == "entrypoint":
            value = [part.replace("{port}", str(port)) for part in value]
        table = data
        for part in section.split("."):
            table = table.setdefault(part, {})
        table[key] = value
    (app / "cerebrium.toml").write_text(_dump_toml({"cerebrium": data}))
    return app


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Tables of strings, numbers, booleans and lists of those (JSON spells them as TOML does)."""
    keys = [f"{key} = {json.dumps(value)}\n" for key, value in data.items() if not isinstance(value, dict)]
    text = f"[{prefix}]\n{''.join(keys)}\n" if keys and prefix else "".join(keys)
    for key, value in data.items():
        if isinstance(value, dict):
            text += _dump_toml(value, f"{prefix}.{key}" if prefix else key)
    return text
