"""JSON body -> validated keyword arguments (and the 400/422 messages), and calling each kind."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from cortex.concurrency import ThreadRunner
from cortex.discovery import FunctionSpec, build_spec
from cortex.errors import InvalidJSONError, RequestError, ValidationFailedError
from cortex.invocation import call_arguments, invoke, open_stream, parse_argument_dict, parse_arguments


class Inner(BaseModel):
    level: int


class Settings(BaseModel):
    name: str
    inner: Inner


class StrictInner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int


def predict(prompt: str, n: int = 1, tags: list[str] | None = None, run_id: str = "") -> str:
    return f"{prompt}:{n}:{tags}:{run_id}"


def configure(settings: Settings) -> str:
    return settings.inner.model_dump_json()


def strict(inner: StrictInner) -> int:
    return inner.level


def options(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, **extra}


def nothing() -> str:
    return "nothing"


def spec(func: Callable[..., Any]) -> FunctionSpec:
    return build_spec(func.__name__, func)


def rejection(func: Callable[..., Any], body: bytes) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_arguments(spec(func), body)
    return caught.value


# parse_arguments


def test_valid_body_becomes_keyword_arguments() -> None:
    assert parse_arguments(spec(predict), b'{"prompt": "hi", "tags": ["a"]}') == {
        "prompt": "hi",
        "tags": ["a"],
    }


def test_omitted_optional_parameters_are_left_to_the_function_default() -> None:
    assert parse_arguments(spec(predict), b'{"prompt": "hi"}') == {"prompt": "hi"}


def test_numeric_strings_are_coerced_for_int_parameters() -> None:
    assert parse_arguments(spec(predict), b'{"prompt": "hi", "n": "3"}') == {"prompt": "hi", "n": 3}


@pytest.mark.parametrize("body", [b"", b"{}"])
def test_empty_body_means_no_arguments(body: bytes) -> None:
    assert parse_arguments(spec(nothing), body) == {}


def test_empty_body_for_required_parameter_is_a_missing_parameter() -> None:
    error = rejection(predict, b"")
    assert isinstance(error, ValidationFailedError)
    assert error.status == 422
    assert error.message == "predict(): missing required parameter 'prompt' (str)."
    assert error.details == [
        {"parameter": "prompt", "message": "missing required parameter 'prompt' (str)", "expected": "str"}
    ]


def test_wrong_type_names_parameter_expected_type_and_value() -> None:
    error = rejection(predict, b'{"prompt": 42}')
    assert error.status == 422
    assert error.message == "predict(): parameter 'prompt' expects str, got 42 (int)."
    assert error.details == [
        {
            "parameter": "prompt",
            "message": "parameter 'prompt' expects str, got 42 (int)",
            "expected": "str",
            "detail": "Input should be a valid string",
        }
    ]


def test_null_for_a_non_optional_parameter_is_rejected() -> None:
    error = rejection(predict, b'{"prompt": null}')
    assert error.message == "predict(): parameter 'prompt' expects str, got null."


def test_long_values_are_shortened_in_the_message() -> None:
    error = rejection(predict, b'{"prompt": "p", "n": "' + b"9x" * 50 + b'"}')
    assert error.message == f"predict(): parameter 'n' expects int, got '{'9x' * 28}... (str)."


def test_every_problem_is_reported_in_one_message() -> None:
    error = rejection(predict, b'{"n": "many", "extra": 1}')
    assert error.message == (
        "predict(): missing required parameter 'prompt' (str); "
        "parameter 'n' expects int, got 'many' (str); "
        "unexpected parameter 'extra' (predict() accepts: prompt, n, tags)."
    )
    assert [d["parameter"] for d in error.details] == ["prompt", "n", "extra"]


def test_unknown_parameter_is_rejected_with_the_accepted_names() -> None:
    error = rejection(predict, b'{"prompt": "hi", "promt": "typo"}')
    assert (
        error.message == "predict(): unexpected parameter 'promt' (did you mean 'prompt'? "
        "predict() accepts: prompt, n, tags)."
    )
    assert error.details == [
        {
            "parameter": "promt",
            "message": (
                "unexpected parameter 'promt' (did you mean 'prompt'? predict() accepts: prompt, n, tags)"
            ),
        }
    ]


def test_run_id_cannot_be_sent_by_the_caller() -> None:
    error = rejection(predict, b'{"prompt": "hi", "run_id": "mine"}')
    assert error.message == "predict(): unexpected parameter 'run_id' (predict() accepts: prompt, n, tags)."


def test_function_without_parameters_says_it_accepts_none() -> None:
    error = rejection(nothing, b'{"x": 1}')
    assert error.message == "nothing(): unexpected parameter 'x' (nothing() accepts: no parameters)."


def test_unknown_keys_pass_through_to_var_keyword_functions() -> None:
    assert parse_arguments(spec(options), b'{"model": "m", "top_k": 5, "stop": ["x"]}') == {
        "model": "m",
        "top_k": 5,
        "stop": ["x"],
    }


def test_nested_model_error_names_the_dotted_path() -> None:
    error = rejection(configure, b'{"settings": {"name": "a", "inner": {"level": "high"}}}')
    assert error.message == (
        "configure(): parameter 'settings.inner.level': Input should be a valid integer, "
        "unable to parse string as an integer (got 'high' (str))."
    )
    assert error.details[0]["parameter"] == "settings.inner.level"


def test_missing_nested_field_names_the_dotted_path() -> None:
    error = rejection(configure, b'{"settings": {"name": "a", "inner": {}}}')
    assert error.message == "configure(): parameter 'settings.inner.level' is required."


def test_model_parameter_given_a_scalar_names_the_model() -> None:
    error = rejection(configure, b'{"settings": 5}')
    assert error.message == "configure(): parameter 'settings' expects Settings, got 5 (int)."


def test_list_item_error_names_the_index() -> None:
    error = rejection(predict, b'{"prompt": "p", "tags": ["ok", 7]}')
    assert error.message == "predict(): parameter 'tags.1': Input should be a valid string (got 7 (int))."


def test_unknown_key_inside_a_strict_model_names_the_dotted_path() -> None:
    error = rejection(strict, b'{"inner": {"level": 1, "bogus": 2}}')
    assert error.message == "strict(): parameter 'inner.bogus' is not allowed here."


@pytest.mark.parametrize(
    ("body", "got"),
    [
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"3", "an integer"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_body_that_is_not_an_object_is_rejected(body: bytes, got: str) -> None:
    error = rejection(predict, body)
    assert error.status == 422
    assert error.message == f"predict(): the request body must be a JSON object of parameters, got {got}."
    assert error.details == [{"parameter": None, "problem": "body must be a JSON object", "got": got}]


def test_malformed_json_is_a_400_with_the_parser_position() -> None:
    error = rejection(predict, b'{"prompt": "hi",}')
    assert isinstance(error, InvalidJSONError)
    assert error.status == 400
    assert error.code == "invalid_json"
    assert error.message.startswith("The request body is not valid JSON: ")
    assert error.message.endswith("at line 1 column 17.")
    assert error.details == []


# parse_argument_dict


def test_argument_dict_is_validated_like_a_body() -> None:
    assert parse_argument_dict(spec(predict), {"prompt": "hi", "n": "4"}) == {"prompt": "hi", "n": 4}


def test_argument_dict_errors_read_like_body_errors() -> None:
    with pytest.raises(ValidationFailedError) as caught:
        parse_argument_dict(spec(predict), {"n": 2})
    assert caught.value.message == "predict(): missing required parameter 'prompt' (str)."


def test_argument_list_is_not_an_object() -> None:
    with pytest.raises(ValidationFailedError) as caught:
        parse_argument_dict(spec(predict), ["hi"])
    assert (
        caught.value.message
        == "predict(): the request body must be a JSON object of parameters, got an array."
    )


# call_arguments


def test_run_id_is_injected_when_the_function_declares_it() -> None:
    assert call_arguments(spec(predict), {"prompt": "hi"}, "run-7") == (
        (),
        {"prompt": "hi", "run_id": "run-7"},
    )


def test_run_id_is_not_passed_to_functions_that_do_not_declare_it() -> None:
    assert call_arguments(spec(options), {"model": "m"}, "run-7") == ((), {"model": "m"})


def test_positional_only_arguments_are_passed_positionally_in_order() -> None:
    def join(a: str, b: str, /, sep: str = "-") -> str:
        return f"{a}{sep}{b}"

    args, kwargs = call_arguments(spec(join), {"sep": "+", "b": "2", "a": "1"}, "r")
    assert (args, kwargs) == (("1", "2"), {"sep": "+"})
    assert join(*args, **kwargs) == "1+2"


def test_omitted_positional_only_default_does_not_shift_later_arguments() -> None:
    def pair(a: int = 1, b: int = 2, /) -> tuple[int, int]:
        return (a, b)

    function = spec(pair)
    args, kwargs = call_arguments(function, parse_argument_dict(function, {"b": 5}), "r")
    assert pair(*args, **kwargs) == (1, 5)


# invoke


def sync_add(a: int, b: int = 1) -> int:
    return a + b


async def async_add(a: int, b: int = 1) -> int:
    await asyncio.sleep(0)
    return a + b


def count(n: int, run_id: str) -> Iterator[str]:
    for i in range(n):
        yield f"{run_id}-{i}"


async def async_count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def where() -> int:
    return threading.get_ident()


def fails() -> None:
    raise ValueError("user bug")


def call(func: Callable[..., Any], kwargs: dict[str, Any], run_id: str = "run-1") -> Any:
    async def main() -> Any:
        threads = ThreadRunner(2)
        try:
            return await invoke(spec(func), kwargs, run_id, threads)
        finally:
            threads.shutdown()

    return asyncio.run(main())


def test_invoke_returns_the_result_of_a_sync_function() -> None:
    assert call(sync_add, {"a": 2}) == 3


def test_invoke_runs_a_sync_function_off_the_event_loop_thread() -> None:
    assert call(where, {}) != threading.get_ident()


def test_invoke_returns_the_result_of_an_async_function() -> None:
    assert call(async_add, {"a": 2, "b": 5}) == 7


def test_invoke_collects_a_generator_into_a_list() -> None:
    assert call(count, {"n": 3}, run_id="r9") == ["r9-0", "r9-1", "r9-2"]


def test_invoke_collects_an_async_generator_into_a_list() -> None:
    assert call(async_count, {"n": 4}) == [0, 1, 2, 3]


def test_invoke_injects_run_id() -> None:
    assert call(predict, {"prompt": "p"}, run_id="abc") == "p:1:None:abc"


def test_invoke_passes_extra_keyword_arguments_through() -> None:
    assert call(options, {"model": "m", "top_k": 3}) == {"model": "m", "top_k": 3}


def test_invoke_propagates_the_users_exception() -> None:
    with pytest.raises(ValueError, match=r"^user bug$"):
        call(fails, {})


def test_invoke_with_parsed_model_argument() -> None:
    function = spec(configure)
    kwargs = parse_arguments(function, b'{"settings": {"name": "n", "inner": {"level": "2"}}}')
    assert call(configure, kwargs) == '{"level":2}'


def test_open_stream_creates_the_generator_without_running_it() -> None:
    started: list[bool] = []

    def lazy(n: int) -> Iterator[int]:
        started.append(True)
        yield n

    stream = open_stream(spec(lazy), {"n": 5}, "r")
    assert started == []
    assert list(stream) == [5]
    assert started == [True]


def test_open_stream_injects_run_id() -> None:
    stream = open_stream(spec(count), {"n": 2}, "run-x")
    assert list(stream) == ["run-x-0", "run-x-1"]
