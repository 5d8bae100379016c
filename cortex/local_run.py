"""`cortex run`: call one function of main.py in this process, validated as the server does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic_core import PydanticSerializationError

from cortex.concurrency import ThreadRunner
from cortex.discovery import MODULE_FILE, FunctionSpec, discover
from cortex.errors import (
    CortexError,
    FunctionRaisedError,
    NotFoundError,
    ResultNotSerializableError,
    RunUsageError,
)
from cortex.invocation import invoke, open_stream, parse_argument_dict
from cortex.serialization import encode_json

TARGET_SEPARATOR = "::"


@dataclass(frozen=True)
class RunTarget:
    app_dir: Path
    function: str


def parse_target(target: str) -> RunTarget:
    """`fn`, `main.py::fn`, `APP_DIR/main.py::fn` or `APP_DIR::fn` -> where main.py is, and which function."""
    location, separator, function = target.rpartition(TARGET_SEPARATOR)
    if not separator:
        location, function = "", target
    if function.endswith(".py") or "/" in function:
        raise RunUsageError(f"Name the function to call: cortex run {target}{TARGET_SEPARATOR}FUNCTION.")
    if not function.isidentifier():
        raise RunUsageError(
            f"'{function}' is not a function name. "
            f"Use cortex run [APP_DIR/main.py{TARGET_SEPARATOR}]FUNCTION."
        )
    path = Path(location or ".")
    if path.suffix == ".py":
        if path.name != MODULE_FILE:
            raise RunUsageError(
                f"{location}: cortex runs the functions of {MODULE_FILE}, as Cerebrium serves them. "
                f"Use {path.parent / MODULE_FILE}{TARGET_SEPARATOR}{function}."
            )
        path = path.parent
    return RunTarget(path, function)


def parse_arguments(data: str | None, pairs: list[str]) -> Any:
    """`--data JSON` merged with `--key value` pairs (a value is JSON when it parses, else a string)."""
    arguments: Any = {}
    if data is not None:
        try:
            arguments = json.loads(data)
        except json.JSONDecodeError as exc:
            raise RunUsageError(
                f"--data is not valid JSON: {exc}. Pass an object, e.g. --data '{{\"x\": 1}}'."
            ) from None
    named = _parse_pairs(pairs)
    if not named:
        return arguments
    if not isinstance(arguments, dict):
        raise RunUsageError("--data must be a JSON object when --key value pairs are given too.")
    return {**arguments, **named}


def _parse_pairs(pairs: list[str]) -> dict[str, Any]:
    named: dict[str, Any] = {}
    index = 0
    while index < len(pairs):
        token = pairs[index]
        if not token.startswith("--") or token == "--":
            raise RunUsageError(
                f"Unexpected argument '{token}'. "
                "Pass arguments as --name value, or all at once with --data JSON."
            )
        key, equals, value = token[2:].partition("=")
        if not equals:
            has_value = index + 1 < len(pairs) and not pairs[index + 1].startswith("--")
            value = pairs[index + 1] if has_value else "true"  # a bare --flag means true
            index += 1 if has_value else 0
        named[key.replace("-", "_")] = _parse_value(value)
        index += 1
    return named


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_function(target: RunTarget, arguments: Any, out: TextIO) -> int:
    """Import main.py, validate, call; write the result (or each chunk) to `out` as one line of JSON.

    What the app prints goes to stderr meanwhile, so `out` (stdout) holds only the JSON.
    """

    def emit(line: str) -> None:
        out.write(line + "\n")
        out.flush()  # each chunk as it comes, even into a pipe

    with contextlib.redirect_stdout(sys.stderr):
        spec = _find_function(target)
        kwargs = parse_argument_dict(spec, arguments)
        run_id = str(uuid.uuid4())
        try:
            if spec.kind.is_streaming:
                _stream(spec, open_stream(spec, kwargs, run_id), emit)
            else:
                emit(_encode(spec, asyncio.run(_invoke(spec, kwargs, run_id)), "returned"))
        except CortexError:
            raise
        except Exception as exc:
            raise FunctionRaisedError(f"{type(exc).__name__}: {exc}") from exc
    return 0


def _find_function(target: RunTarget) -> FunctionSpec:
    functions = discover(target.app_dir).functions
    spec = functions.get(target.function)
    if spec is None:
        public = ", ".join(sorted(functions)) or "none"
        raise NotFoundError(f"No function '{target.function}' in {MODULE_FILE}. Public functions: {public}.")
    return spec


async def _invoke(spec: FunctionSpec, kwargs: dict[str, Any], run_id: str) -> Any:
    threads = ThreadRunner(1, name="cortex-run")
    try:
        return await invoke(spec, kwargs, run_id, threads)
    finally:
        threads.shutdown()


def _stream(
    spec: FunctionSpec, chunks: Iterator[Any] | AsyncIterator[Any], emit: Callable[[str], None]
) -> None:
    if isinstance(chunks, Iterator):
        with contextlib.closing(chunks):  # type: ignore[type-var]  # a generator has close()
            for chunk in chunks:
                emit(_encode(spec, chunk, "yielded"))
        return

    async def pump(stream: AsyncIterator[Any]) -> None:
        async for chunk in stream:
            emit(_encode(spec, chunk, "yielded"))

    asyncio.run(pump(chunks))


def _encode(spec: FunctionSpec, value: Any, verb: str) -> str:
    try:
        return encode_json(value).decode()
    except PydanticSerializationError as exc:
        raise ResultNotSerializableError(
            f"{spec.name}() {verb} a value that cannot be written as JSON ({exc}). Return "
            "JSON types, pydantic models or dataclasses."
        ) from None
