"""OpenAI wire shapes: argument selection, aggregation of chunks, embeddings, stream frames, paths."""

from __future__ import annotations

import base64
import json
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from cortex.errors import FunctionReportedError, IncompatibleResultError
from cortex.openai_compat.aggregate import (
    aggregate_chat,
    aggregate_completion,
    apply_shape,
    as_stream_chunk,
    chunk_pieces,
)
from cortex.openai_compat.models import (
    ResultShape,
    StreamFramer,
    encode_error,
    select_arguments,
    served_model,
    shape_embeddings,
)
from cortex.openai_compat.routes import Endpoint, OpenAIPath, match_openai_path

CHAT = ResultShape(kind="chat", model="served")
COMPLETION = ResultShape(kind="completion", model="served")


def delta(
    content: str | None = None, finish: str | None = None, index: int = 0, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {} if content is None else {"content": content}
    body.update(extra)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [{"index": index, "delta": body, "finish_reason": finish}],
    }


def framed(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk)}\n\n"


def test_select_arguments_keeps_declared_names_and_reports_the_rest() -> None:
    body = {"messages": [], "model": "m", "user": "u", "seed": 1}
    assert select_arguments(body, ["messages", "model"], takes_extra=False) == (
        {"messages": [], "model": "m"},
        ["user", "seed"],
    )
    assert select_arguments(body, ["messages"], takes_extra=True) == (body, [])


def test_served_model_prefers_the_function_then_the_module_then_the_fallback() -> None:
    def run() -> None: ...

    module = SimpleNamespace(__cortex_model__="module-model")
    assert served_model(run, None, "app") == "app"
    assert served_model(run, module, "app") == "module-model"
    run.__cortex_model__ = "fn-model"  # type: ignore[attr-defined]
    assert served_model(run, module, "app") == "fn-model"


def test_chat_chunks_in_every_form_aggregate_into_one_completion() -> None:
    chunks: list[Any] = [
        framed(delta(role="assistant")),
        delta("Hel"),
        "lo",  # plain text is content
        b"data: " + json.dumps(delta(" you")).encode() + b"\n\n",
        framed(delta(None, "stop")) + "data: [DONE]\n\n",  # two events in one string
    ]
    answer = apply_shape(CHAT, chunks, "run", "r1", created=99)
    assert answer == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello you"}, "finish_reason": "stop"}
        ],
    }


def test_chunks_without_ids_take_the_run_id_the_served_model_and_the_clock() -> None:
    answer = apply_shape(CHAT, ["a", "b"], "run", "r1", created=99)
    assert (answer["id"], answer["model"], answer["created"]) == ("chatcmpl-r1", "served", 99)
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "ab"}


def test_usage_chunk_without_choices_is_kept() -> None:
    usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    chunks = [delta("x", "stop"), {**delta(), "choices": [], "usage": usage}]
    assert aggregate_chat(chunks, "run", "d", "served", 1)["usage"] == usage


def test_choices_are_kept_apart_by_index() -> None:
    chunks = [delta("a", index=0), delta("b", index=1), delta("c", index=0, finish="length")]
    answer = aggregate_chat(chunks, "run", "d", "served", 1)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "ac", "length"),
        (1, "b", "stop"),
    ]


def test_streamed_tool_calls_are_merged_by_index() -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"ci'}}
    rest = {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}
    chunks = [delta(None, tool_calls=[first]), delta(None, tool_calls=[rest]), delta(None, "tool_calls")]
    [choice] = aggregate_chat(chunks, "run", "d", "served", 1)["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"city": "Oslo"}'}}
        ],
    }
    assert choice["finish_reason"] == "tool_calls"


def test_one_whole_chat_completion_is_answered_as_is() -> None:
    whole = {"id": "x", "object": "chat.completion", "choices": [], "custom": True}
    assert apply_shape(CHAT, [framed(whole)], "run", "r", 1) == whole


def test_dicts_and_models_returned_by_a_plain_function_are_answers_as_they_are() -> None:
    assert apply_shape(CHAT, {"anything": 1}, "run", "r", 1) == {"anything": 1}


def test_an_error_chunk_fails_the_aggregation() -> None:
    with pytest.raises(FunctionReportedError) as caught:
        apply_shape(CHAT, [delta("a"), {"error": {"message": "out of memory"}}], "run", "r", 1)
    assert str(caught.value) == "run() sent an error instead of a completion: out of memory"


def test_a_chunk_of_another_type_is_an_error_saying_what_to_yield() -> None:
    with pytest.raises(IncompatibleResultError) as caught:
        chunk_pieces(42, "run")
    assert str(caught.value) == (
        "run() produced a int where an OpenAI route needs a chunk: return or yield OpenAI chunk "
        "dicts, `data: {...}` strings, or plain text."
    )


def test_non_json_data_and_comments_in_frames() -> None:
    assert chunk_pieces(": keep-alive\n\ndata: hello\n\ndata: [DONE]\n\n", "run") == ["hello"]


def test_text_completion_chunks_and_chat_deltas_join_as_text() -> None:
    chunks = [
        {
            "id": "cmpl-9",
            "object": "text_completion",
            "created": 3,
            "model": "t",
            "choices": [{"index": 0, "text": "a"}],
        },
        delta("b", "length"),
    ]
    assert aggregate_completion(chunks, "f", "cmpl-d", "served", 1) == {
        "id": "cmpl-9",
        "object": "text_completion",
        "created": 3,
        "model": "t",
        "choices": [{"index": 0, "text": "ab", "finish_reason": "length"}],
    }
    assert apply_shape(COMPLETION, "just text", "f", "r2", 7)["choices"][0]["text"] == "just text"


def test_a_whole_completion_becomes_one_stream_chunk() -> None:
    whole = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}]}
    assert as_stream_chunk(whole) == {
        "id": "x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    assert as_stream_chunk({"object": "text_completion"}) == {"object": "text_completion"}


class Vector:
    """Something with tolist(), as numpy arrays and torch tensors have."""

    def tolist(self) -> list[list[float]]:
        return [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("result", "vectors"),
    [
        ([[1, 2.5], [3, 4]], [[1.0, 2.5], [3.0, 4.0]]),
        ([0.5, 1], [[0.5, 1.0]]),  # one vector
        ((x for x in ()), None),
        (Vector(), [[1.0, 2.0]]),
        ([], []),
    ],
)
def test_vectors_are_wrapped_into_an_embeddings_list(result: Any, vectors: list[list[float]] | None) -> None:
    if vectors is None:
        with pytest.raises(IncompatibleResultError):
            shape_embeddings(result, "m", "float", "embed")
        return
    answer = shape_embeddings(result, "m", "float", "embed")
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": "m",
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def test_base64_embeddings_are_little_endian_float32() -> None:
    answer = shape_embeddings([[1.0, -2.5, 0.1]], "m", "base64", "embed")
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert raw == struct.pack("<3f", 1.0, -2.5, 0.1)


def test_a_whole_embeddings_object_is_kept() -> None:
    whole = {"object": "list", "data": [], "model": "x"}
    assert shape_embeddings(whole, "m", "base64", "embed") is whole


def test_result_shape_round_trips_as_json() -> None:
    shape = ResultShape(kind="embeddings", model="m", encoding_format="base64")
    assert ResultShape.model_validate_json(shape.model_dump_json()) == shape


def test_error_body_has_all_four_keys() -> None:
    assert json.loads(encode_error(422, "bad", "validation_error", "prompt")) == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "validation_error",
        }
    }
    assert json.loads(encode_error(429, "busy", "overloaded"))["error"]["type"] == "rate_limit_error"
    assert json.loads(encode_error(503, "later", None))["error"] == {
        "message": "later",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_framer_adds_done_once_and_drops_what_follows_the_functions_own() -> None:
    framer = StreamFramer("chat", "run", "r1", "m", 9)
    assert framer.encode({"a": 1}) == b'data: {"a":1}\n\n'
    assert framer.encode("data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert framer.encode({"late": True}) == b""
    assert framer.encode_error(RuntimeError("x"), "r1") == b""
    assert framer.terminator() == b""


def test_framer_ends_with_done_and_wraps_plain_text() -> None:
    framer = StreamFramer("completion", "run", "r1", "m", 9)
    frame = framer.encode("tok")
    assert json.loads(frame.removeprefix(b"data: ")) == {
        "id": "cmpl-r1",
        "object": "text_completion",
        "created": 9,
        "model": "m",
        "choices": [{"index": 0, "text": "tok", "finish_reason": None}],
    }
    assert framer.encode("data: [DONE-ish]\n\n") == b"data: [DONE-ish]\n\n"  # not the terminator
    error = framer.encode_error(ValueError("boom"), "r1")
    assert json.loads(error.removeprefix(b"data: "))["error"] == {
        "message": "run() raised ValueError: boom",
        "type": "server_error",
        "param": None,
        "code": "function_error",
    }
    assert framer.terminator() == b"data: [DONE]\n\n"
    assert framer.terminator() == b""


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        (["run", "chat", "completions"], OpenAIPath("run", Endpoint.CHAT)),
        (["run", "chat", "completions", ""], OpenAIPath("run", Endpoint.CHAT)),
        (["run", "completions"], OpenAIPath("run", Endpoint.COMPLETIONS)),
        (["embed", "embedding"], OpenAIPath("embed", Endpoint.EMBEDDINGS)),
        (["embed", "embeddings"], OpenAIPath("embed", Endpoint.EMBEDDINGS)),
        (["run", "models"], OpenAIPath("run", Endpoint.MODELS)),
        (["run", "models", "Qwen", "Qwen2-0.5B"], OpenAIPath("run", Endpoint.MODELS, "Qwen/Qwen2-0.5B")),
        (["run"], None),
        (["run", ""], None),
        (["run", "chat"], None),
        (["run", "other", "completions"], None),
    ],
)
def test_openai_paths(rest: list[str], expected: OpenAIPath | None) -> None:
    assert match_openai_path(rest) == expected
