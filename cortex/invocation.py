"""Call a FunctionSpec: JSON body -> validated kwargs; sync in a thread, async on the loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import ValidationError

from cortex.concurrency import ThreadRunner
from cortex.discovery import RUN_ID_PARAMETER, FunctionKind, FunctionSpec
from cortex.errors import InvalidJSONError, ValidationFailedError


def parse_arguments(spec: FunctionSpec, body: bytes) -> dict[str, Any]:
    """Validate a JSON body against the function's parameters; an empty body means `{}`."""
    try:
        return spec.arguments.validate_json(body or b"{}")
    except ValidationError as exc:
        raise describe_validation_error(spec, exc) from None


def parse_argument_dict(spec: FunctionSpec, data: Any) -> dict[str, Any]:
    """The same validation for arguments that are already Python objects (CLI, job store)."""
    try:
        return spec.arguments.validate_python(data)
    except ValidationError as exc:
        raise describe_validation_error(spec, exc) from None


def describe_validation_error(
    spec: FunctionSpec, exc: ValidationError
) -> InvalidJSONError | ValidationFailedError:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return InvalidJSONError(f"The request body is not valid JSON: {errors[0]['ctx']['error']}.")
    if len(errors) == 1 and not errors[0]["loc"]:
        got = _json_type_name(errors[0]["input"])
        return ValidationFailedError(
            f"{spec.name}(): the request body must be a JSON object of parameters, got {got}.",
            [{"parameter": None, "problem": "body must be a JSON object", "got": got}],
        )
    details = [_describe_problem(spec, err) for err in errors]
    message = f"{spec.name}(): " + "; ".join(d["message"] for d in details) + "."
    return ValidationFailedError(message, details)


def _describe_problem(spec: FunctionSpec, err: Any) -> dict[str, Any]:
    name = str(err["loc"][0])
    path = ".".join(str(part) for part in err["loc"])
    param = next((p for p in spec.parameters if p.name == name), None)
    if err["type"] == "missing" and len(err["loc"]) == 1 and param is not None:
        message = f"missing required parameter '{name}' ({param.type_name})"
        return {"parameter": name, "message": message, "expected": param.type_name}
    if err["type"] == "extra_forbidden":
        accepted = ", ".join(spec.parameter_names) or "no parameters"
        message = f"unexpected parameter '{name}' ({spec.name}() accepts: {accepted})"
        return {"parameter": name, "message": message}
    got = _describe_value(err["input"])
    if len(err["loc"]) == 1 and param is not None:
        message = f"parameter '{name}' expects {param.type_name}, got {got}"
        return {
            "parameter": name,
            "message": message,
            "expected": param.type_name,
            "detail": err["msg"],
        }
    message = f"parameter '{path}': {err['msg']} (got {got})"
    return {"parameter": path, "message": message, "detail": err["msg"]}


def _describe_value(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({'null' if value is None else type(value).__name__})"


def _json_type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    names.update({int: "an integer", float: "a number", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def call_arguments(
    spec: FunctionSpec, kwargs: dict[str, Any], run_id: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments for the call, with run_id injected when declared."""
    if spec.takes_run_id:
        kwargs[RUN_ID_PARAMETER] = run_id
    if not spec.positional_only:
        return (), kwargs
    args = tuple(kwargs.pop(name) for name in spec.positional_only if name in kwargs)
    return args, kwargs


async def invoke(spec: FunctionSpec, kwargs: dict[str, Any], run_id: str, threads: ThreadRunner) -> Any:
    """Call a non-streaming function; a generator's chunks are collected into a list."""
    args, kwargs = call_arguments(spec, kwargs, run_id)
    kind = spec.kind
    if kind is FunctionKind.ASYNC:
        return await spec.func(*args, **kwargs)
    if kind is FunctionKind.SYNC:
        return await threads.run(_call_with_kwargs, spec.func, args, kwargs)
    if kind is FunctionKind.GENERATOR:
        return await threads.run(_collect, spec.func, args, kwargs)
    return [chunk async for chunk in spec.func(*args, **kwargs)]


def open_stream(
    spec: FunctionSpec, kwargs: dict[str, Any], run_id: str
) -> Iterator[Any] | AsyncIterator[Any]:
    """Create the generator of a streaming function (its body has not started yet)."""
    args, kwargs = call_arguments(spec, kwargs, run_id)
    generator: Iterator[Any] | AsyncIterator[Any] = spec.func(*args, **kwargs)
    return generator


def _call_with_kwargs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)


def _collect(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    return list(func(*args, **kwargs))
