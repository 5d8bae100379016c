"""What `cortex serve` prints once main.py is loaded: each endpoint with a curl line (pure)."""

from __future__ import annotations

import json
import shlex
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cortex.discovery import FunctionSpec, Registry

_EXAMPLE_VALUES: dict[Any, Any] = {str: "hello", int: 1, float: 1.0, bool: True, list: [], dict: {}}


def example_arguments(spec: FunctionSpec) -> dict[str, Any]:
    """A body that passes validation for plain types: required parameters with sample values."""
    return {p.name: _example_value(p.annotation) for p in spec.parameters if p.required}


def _example_value(annotation: Any) -> Any:
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        fields = origin.model_fields.items()
        return {
            _input_name(name, field): _example_value(field.annotation)
            for name, field in fields
            if field.is_required()
        }
    return _EXAMPLE_VALUES.get(origin)


def _input_name(name: str, field: FieldInfo) -> str:
    """The key validation reads: the field's alias when it has one."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return field.alias or name


# Double quotes so the shell expands the variable `describe_endpoints` tells the user to set.
TOKEN_HEADER = '-H "Authorization: Bearer $CORTEX_TOKEN"'


def curl_command(base_url: str, spec: FunctionSpec, with_token: bool = False) -> str:
    body = json.dumps(example_arguments(spec))
    parts = [
        "curl",
        "-X",
        "POST",
        f"{base_url}/{spec.name}",
        "-H",
        "content-type: application/json",
    ]
    if spec.kind.is_streaming:
        parts += ["-H", "accept: text/event-stream", "-N"]
    parts += ["-d", body]
    command = shlex.join(parts)
    return f"{command} {TOKEN_HEADER}" if with_token else command


def describe_endpoints(base_url: str, registry: Registry, token_project: str | None = None) -> list[str]:
    """With `token_project` (auth is on), the curl lines send a token the user is told how to mint."""
    with_token = token_project is not None
    seconds = registry.import_seconds
    count = len(registry.functions)
    lines = [f"main.py imported in {seconds:.2f} s; {count} endpoint{'s' if count != 1 else ''}:"]
    if with_token:
        mint = f"export CORTEX_TOKEN=$(cortex token --project-id {token_project})"
        lines.append(f"  Calls need a token (same CORTEX_JWT_SECRET as the server): {mint}")
    for spec in registry.functions.values():
        lines.append(f"  {spec.name}() [{spec.kind.value}]")
        lines.append(f"    {curl_command(base_url, spec, with_token)}")
    if not registry.functions:
        lines.append("  (none: define a public function in main.py, e.g. def predict(prompt: str): ...)")
    return lines


def describe_proxy(base_url: str, port: int, token_project: str | None = None) -> list[str]:
    """A custom runtime: where calls go, and one to try."""
    lines = [f"The app's server is ready; {base_url}/<path> is forwarded to http://127.0.0.1:{port}/<path>"]
    command = f"curl {base_url}/"
    if token_project is not None:
        mint = f"export CORTEX_TOKEN=$(cortex token --project-id {token_project})"
        lines.append(f"  Calls need a token (same CORTEX_JWT_SECRET as the server): {mint}")
        command = f"{command} {TOKEN_HEADER}"
    lines.append(f"    {command}")
    return lines
