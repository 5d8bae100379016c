"""Call a FunctionSpec: JSON body -> validated kwargs; sync in a thread, async on the loop."""

from __future__ import annotations

import difflib
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
    loc = err["loc"]
    name = str(loc[0])
    param = next((p for p in spec.parameters if p.name == name), None)
    if len(loc) > 1 or (param is None and err["type"] != "extra_forbidden"):
        return _describe_nested_problem(err)
    if err["type"] == "extra_forbidden":
        accepted = ", ".join(spec.parameter_names) or "no parameters"
        close = difflib.get_close_matches(name, spec.parameter_names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        message = f"unexpected parameter '{name}' ({hint}{spec.name}() accepts: {accepted})"
        return {"parameter": name, "message": message}
    assert param is not None
    if err["type"] == "missing":
        message = f"missing required parameter '{name}' ({param.type_name})"
        return {"parameter": name, "message": message, "expected": param.type_name}
    message = f"parameter '{name}' expects {param.type_name}, got {_describe_value(err['input'])}"
    return {"parameter": name, "message": message, "expected": param.type_name, "detail": err["msg"]}


def _describe_nested_problem(err: Any) -> dict[str, Any]:
    """A problem inside a model or container: the dotted path and pydantic's own words."""
    path = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        message = f"parameter '{path}' is required"
    elif err["type"] == "extra_forbidden":
        message = f"parameter '{path}' is not allowed here"
    else:
        message = f"parameter '{path}': {err['msg']} (got {_describe_value(err['input'])})"
    return {"parameter": path, "message": message, "detail": err["msg"]}


def _describe_value(value: Any) -> str:
    """How a received JSON value reads in a message: `42 (int)`, `'x' (str)`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (bool)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


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
    # Positional-only parameters go in order; an omitted one takes its default, so a later
    # one given by the caller cannot shift into its place.
    args = tuple(kwargs.pop(name, default) for name, default in spec.positional_only)
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
    try:
        return func(*args, **kwargs)
    except StopIteration as exc:  # e.g. next() on an empty iterator; futures cannot carry it
        raise RuntimeError(f"{func.__name__}() raised StopIteration") from exc


def _collect(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    return list(func(*args, **kwargs))
