"""What `cortex serve` prints: sample arguments, a curl line per function, the endpoint list."""

from __future__ import annotations

import json
import shlex
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from cortex.banner import curl_command, describe_endpoints, example_arguments
from cortex.discovery import FunctionSpec, Registry, build_spec
from cortex.invocation import parse_argument_dict

BASE = "http://127.0.0.1:8000/v4/p-123/my-app"


class Inner(BaseModel):
    level: int
    note: str = "n"


class Settings(BaseModel):
    name: str
    inner: Inner
    ratio: float = 0.5


class Aliased(BaseModel):
    input_text: str = Field(alias="inputText")


def predict(prompt: str, n: int = 3, run_id: str = "") -> str:
    return prompt


def every_type(
    text: str, count: int, ratio: float, flag: bool, items: list, mapping: dict, words: list[str]
) -> None: ...


def configure(settings: Settings, dry_run: bool = False) -> None: ...


def optional(limit: int | None, untyped) -> None: ...


def aliased(payload: Aliased) -> None: ...


def words(text: str) -> Iterator[str]:
    yield text


async def tokens(prompt: str, n: int = 1) -> AsyncIterator[str]:
    yield prompt


def no_arguments() -> str:
    return "ok"


def spec(func: Callable[..., Any]) -> FunctionSpec:
    return build_spec(func.__name__, func)


def registry(*funcs: Callable[..., Any], seconds: float = 0.25) -> Registry:
    module = types.ModuleType("main")
    return Registry(module, {f.__name__: spec(f) for f in funcs}, seconds)


# example_arguments


def test_example_has_only_required_parameters() -> None:
    assert example_arguments(spec(predict)) == {"prompt": "hello"}


def test_example_values_follow_the_parameter_type() -> None:
    assert example_arguments(spec(every_type)) == {
        "text": "hello",
        "count": 1,
        "ratio": 1.0,
        "flag": True,
        "items": [],
        "mapping": {},
        "words": [],
    }


def test_example_expands_a_model_to_its_required_fields() -> None:
    assert example_arguments(spec(configure)) == {"settings": {"name": "hello", "inner": {"level": 1}}}


def test_example_for_optional_and_untyped_parameters_is_null() -> None:
    assert example_arguments(spec(optional)) == {"limit": None, "untyped": None}


def test_example_of_a_function_without_parameters_is_empty() -> None:
    assert example_arguments(spec(no_arguments)) == {}


@pytest.mark.parametrize("func", [predict, every_type, configure, optional, words, tokens, no_arguments])
def test_example_arguments_pass_validation(func: Callable[..., Any]) -> None:
    function = spec(func)
    example = example_arguments(function)
    assert parse_argument_dict(function, json.loads(json.dumps(example))).keys() == example.keys()


def test_example_for_a_model_with_aliases_passes_validation() -> None:
    function = spec(aliased)
    parse_argument_dict(function, example_arguments(function))


# curl_command


def test_curl_command_posts_the_example_as_json() -> None:
    assert curl_command(BASE, spec(predict)) == (
        "curl -X POST http://127.0.0.1:8000/v4/p-123/my-app/predict "
        "-H 'content-type: application/json' -d '{\"prompt\": \"hello\"}'"
    )


@pytest.mark.parametrize(("func", "body"), [(words, {"text": "hello"}), (tokens, {"prompt": "hello"})])
def test_curl_command_for_a_generator_asks_for_an_unbuffered_event_stream(
    func: Callable[..., Any], body: dict[str, str]
) -> None:
    argv = shlex.split(curl_command(BASE, spec(func)))
    assert argv[:6] == [
        "curl",
        "-X",
        "POST",
        f"{BASE}/{func.__name__}",
        "-H",
        "content-type: application/json",
    ]
    assert argv[6:9] == ["-H", "accept: text/event-stream", "-N"]
    assert argv[9] == "-d"
    assert json.loads(argv[10]) == body


def test_curl_command_for_a_plain_function_does_not_ask_for_a_stream() -> None:
    command = curl_command(BASE, spec(predict))
    assert "text/event-stream" not in command
    assert " -N" not in command


def test_curl_command_body_is_one_shell_word() -> None:
    argv = shlex.split(curl_command(BASE, spec(configure)))
    assert argv[-2] == "-d"
    assert json.loads(argv[-1]) == {"settings": {"name": "hello", "inner": {"level": 1}}}


def test_curl_command_without_parameters_sends_an_empty_object() -> None:
    assert curl_command(BASE, spec(no_arguments)).endswith("-d '{}'")


# describe_endpoints


def test_endpoints_list_each_function_with_its_kind_and_curl_line() -> None:
    lines = describe_endpoints(BASE, registry(predict, words))
    assert lines == [
        "main.py imported in 0.25 s; 2 endpoints:",
        "  predict() [sync]",
        f"    {curl_command(BASE, spec(predict))}",
        "  words() [generator]",
        f"    {curl_command(BASE, spec(words))}",
    ]


def test_endpoints_header_is_singular_for_one_function() -> None:
    lines = describe_endpoints(BASE, registry(tokens, seconds=1.234))
    assert lines[:2] == ["main.py imported in 1.23 s; 1 endpoint:", "  tokens() [async generator]"]


def test_endpoints_without_functions_suggest_defining_one() -> None:
    assert describe_endpoints(BASE, registry(seconds=0.0)) == [
        "main.py imported in 0.00 s; 0 endpoints:",
        "  (none: define a public function in main.py, e.g. def predict(prompt: str): ...)",
    ]
