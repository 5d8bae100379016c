"""The OpenAI routes through the official `openai` SDK (and httpx for raw bytes) on a real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from cortex.jobs.sqlite_store import RUNS
from tests.conftest import APPS, serving, wait_for

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]
LOCAL = "127.0.0.0/8"  # the webhook receiver listens on loopback


@pytest.fixture(scope="module")
def served():
    with serving(APPS / "openai_app", webhook_allow_cidrs=LOCAL) as served:
        yield served


@contextmanager
def sdk(served, function: str) -> Iterator[openai.OpenAI]:
    """The official client pointed at one function; no retries, so a 500 is seen once."""
    with openai.OpenAI(base_url=f"{served.base}/{function}", api_key="x", max_retries=0) as client:
        yield client


def post(served, path: str, body: object, **kwargs) -> httpx.Response:
    with served.client() as client:
        return client.post(f"{served.base}/{path}", json=body, **kwargs)


def poll_until_done(served, run_id: str) -> dict:
    with served.client() as client:

        def done() -> dict | None:
            response = client.get(f"{served.base}/runs/{run_id}")
            return response.json() if response.status_code == 200 else None

        result: dict = wait_for(done, 15, f"run {run_id} to finish")
        return result


def sse_data(text: str) -> list[str]:
    """The `data:` of each event of an SSE body."""
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


# Chat: (a) an async generator of pre-framed chunks with its own [DONE]


def test_chat_stream_of_pre_framed_chunks(served):
    with sdk(served, "run") as client:
        chunks = list(client.chat.completions.create(model="echo-llm", messages=MESSAGES, stream=True))
    assert [c.choices[0].delta.content for c in chunks] == ["", "hello ", "there ", "world ", None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"echo-llm"}


def test_chat_without_stream_aggregates_the_generator_and_tells_it_stream_false(served):
    with sdk(served, "run") as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-llm", messages=MESSAGES)
    completion = raw.parse()
    run_id = raw.headers["x-request-id"]
    assert completion.id == f"chatcmpl-{run_id}"  # run_id was injected into the function
    assert completion.object == "chat.completion"
    assert completion.created == 1700000000
    assert completion.model == "echo-llm"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello there world "
    assert choice.finish_reason == "stop"
    # The SDK leaves `stream` out; the function declares it, so it ran with stream=False and
    # sent usage, as it does for a whole answer.
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.total_tokens) == (3, 7)


def test_explicit_stream_false_is_passed_to_the_function(served):
    with sdk(served, "run") as client:
        completion = client.chat.completions.create(model="echo-llm", messages=MESSAGES, stream=False)
    assert completion.choices[0].message.content == "hello there world "
    assert completion.usage is not None


def test_done_is_sent_exactly_once_when_the_function_sends_it(served):
    response = post(served, "run/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    run_id = response.headers["x-request-id"]
    data = sse_data(response.text)
    assert data.count("[DONE]") == 1
    assert data[-1] == "[DONE]"
    assert response.text.endswith("\n\ndata: [DONE]\n\n")
    first = json.loads(data[0])
    assert first["id"] == f"chatcmpl-{run_id}"
    # Pre-framed chunks pass through verbatim (json.dumps spacing, not ours).
    assert response.text.startswith('data: {"id": "chatcmpl-')


# Chat: (b) a sync generator of dict chunks, without [DONE]


def test_chat_stream_of_dict_chunks_gets_done_added(served):
    response = post(
        served, "chat_dicts/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}
    )
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1
    assert json.loads(data[1])["choices"][0]["delta"] == {"content": "HELLO"}
    with sdk(served, "chat_dicts") as client:
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "HELLOTHEREWORLD"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_of_dict_chunks_without_stream_is_one_completion(served):
    with sdk(served, "chat_dicts") as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"  # the chunks carried no id
    assert completion.model == "dict-llm"
    assert completion.created == 1
    assert completion.choices[0].message.content == "HELLOTHEREWORLD"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is None


def test_plain_text_chunks_stream_as_completion_chunks(served):
    with sdk(served, "chat_words") as client:
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        whole = client.chat.completions.create(model="m", messages=MESSAGES)
    assert [c.choices[0].delta.content for c in chunks] == ["hello|", "there|", "world|"]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"openai-app"}  # no model declared: the app's name
    assert whole.choices[0].message.content == "hello|there|world|"


# Chat: (c) a function returning a dict, or text


def test_chat_function_returning_a_dict_answers_it_as_is(served):
    with sdk(served, "chat_dict") as client:
        completion = client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, temperature=0.25, user="u-1", seed=7, n=1
        )
    assert completion.id == "chatcmpl-fixed"
    assert completion.model == "dict-model"
    assert completion.choices[0].message.content == "model=gpt-x temperature=0.25 words=3"
    assert completion.usage is not None and completion.usage.total_tokens == 3


def test_chat_function_returning_a_dict_streams_it_as_one_chunk(served):
    with sdk(served, "chat_dict") as client:
        chunks = list(client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True))
    [chunk] = chunks
    assert chunk.object == "chat.completion.chunk"
    assert chunk.choices[0].delta.content == "model=gpt-x temperature=1.0 words=3"
    assert chunk.choices[0].finish_reason == "stop"
    response = post(
        served, "chat_dict/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}
    )
    assert sse_data(response.text)[-1] == "[DONE]"
    assert len(sse_data(response.text)) == 2


def test_chat_function_returning_text_is_wrapped(served):
    with sdk(served, "chat_text") as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert completion.model == "openai-app"
    assert completion.choices[0].message.content == "plain hello there world"
    assert completion.choices[0].finish_reason == "stop"


def test_async_client_streams(served):
    async def collect() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{served.base}/run", api_key="x", max_retries=0) as client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return [chunk.choices[0].delta.content or "" async for chunk in stream]

    assert "".join(asyncio.run(collect())) == "hello there world "


# Parameters


def test_openai_parameters_the_function_does_not_declare_are_dropped(served):
    with sdk(served, "run") as client:
        chunks = list(
            client.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                user="someone",
                seed=42,
                n=1,
                presence_penalty=0.5,
                max_tokens=2,  # declared: passed through
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello there "


def test_a_function_with_kwargs_receives_every_parameter(served):
    with sdk(served, "with_kwargs") as client:
        completion = client.chat.completions.create(model="m", messages=MESSAGES, user="u", seed=1)
    assert completion.choices[0].message.content == "keys: model,seed,user"


# Completions


def test_completions_stream_and_whole(served):
    with sdk(served, "complete") as client:
        chunks = list(client.completions.create(model="m", prompt="one two three", stream=True))
        raw = client.completions.with_raw_response.create(model="m", prompt="one two three", max_tokens=2)
    assert [c.choices[0].text for c in chunks] == ["one ", "two ", "three ", ""]
    assert chunks[-1].choices[0].finish_reason == "stop"
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id == f"cmpl-{raw.headers['x-request-id']}"
    assert completion.model == "text-llm"
    assert completion.choices[0].text == "one two "
    assert completion.choices[0].finish_reason == "stop"


def test_completions_of_a_chat_generator_join_the_deltas(served):
    with sdk(served, "chat_words") as client:
        chunks = list(
            client.completions.create(model="m", prompt="x", stream=True, extra_body={"messages": MESSAGES})
        )
        whole = client.completions.create(model="m", prompt="x", extra_body={"messages": MESSAGES})
    assert [c.choices[0].text for c in chunks] == ["hello|", "there|", "world|"]
    assert whole.choices[0].text == "hello|there|world|"


# Embeddings


def test_embeddings_in_the_sdk_default_base64(served):
    with sdk(served, "embed") as client:
        response = client.embeddings.create(model="m", input=["a", "bbb"])  # sends encoding_format=base64
    assert [e.embedding for e in response.data] == [[1.0, 0.0, 0.5], [3.0, 1.0, 0.5]]
    assert [e.index for e in response.data] == [0, 1]
    assert response.model == "openai-app"
    assert response.usage.prompt_tokens == 0
    raw = post(served, "embed/embeddings", {"model": "m", "input": ["a"], "encoding_format": "base64"})
    encoded = raw.json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (1.0, 0.0, 0.5)  # little-endian float32


def test_embeddings_as_floats(served):
    with sdk(served, "embed") as client:
        response = client.embeddings.create(model="m", input="four", encoding_format="float")
    assert [e.embedding for e in response.data] == [[4.0, 0.0, 0.5]]
    raw = post(served, "embed/embeddings", {"model": "m", "input": "four", "encoding_format": "float"})
    assert raw.json() == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [4.0, 0.0, 0.5]}],
        "model": "openai-app",
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def test_embedding_singular_path_and_one_vector(served):
    response = post(served, "embed_one/embedding", {"input": "x"})
    assert response.status_code == 200
    assert response.json()["data"] == [{"object": "embedding", "index": 0, "embedding": [0.25, -1.5, 3.0]}]


def test_a_whole_embeddings_object_is_answered_as_is(served):
    with sdk(served, "embed_full") as client:
        response = client.embeddings.create(model="mine", input=["a"])
    assert response.model == "mine"
    assert response.data[0].embedding == [1.0, 2.0]
    assert response.usage.total_tokens == 5


def test_a_result_that_is_not_vectors_is_a_500_saying_what_to_return(served):
    response = post(served, "embed_wrong/embeddings", {"input": "x"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "embed_wrong() returned 'not a vector' (str); an embeddings route needs a list of "
            "vectors (lists of numbers), one vector, or an OpenAI embeddings object with `data`.",
            "type": "server_error",
            "param": None,
            "code": "incompatible_result",
        }
    }


# Models


def test_models_lists_the_declared_model_or_the_app_name(served):
    with sdk(served, "run") as client:
        models = client.models.list()
        retrieved = client.models.retrieve("echo-llm")
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("other")
    assert [m.id for m in models.data] == ["echo-llm"]
    assert models.data[0].owned_by == "cortex"
    assert models.data[0].object == "model"
    assert isinstance(models.data[0].created, int)
    assert retrieved.id == "echo-llm"
    assert missing.value.body == {
        "message": "No model 'other': run() serves 'echo-llm'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    with sdk(served, "embed") as client:
        assert [m.id for m in client.models.list().data] == ["openai-app"]


# Errors


def test_unknown_function_is_not_found(served):
    with sdk(served, "nope") as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["code"] == "not_found"
    assert caught.value.body["message"].startswith("No function 'nope' in main.py. Public functions: run, ")


def test_missing_required_parameter_is_422_naming_it(served):
    with sdk(served, "needs_prompt") as client, pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.body == {
        "message": "needs_prompt(): missing required parameter 'prompt' (str).",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "validation_error",
    }


def test_wrong_type_names_the_parameter(served):
    response = post(served, "run/chat/completions", {"model": "m", "messages": "hi"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert error["message"] == "run(): parameter 'messages' expects list, got 'hi' (str)."


def test_user_exception_is_a_500_in_openai_shape(served):
    with sdk(served, "explode") as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.body == {
        "message": "explode() raised ValueError: no GPU today",
        "type": "server_error",
        "param": None,
        "code": "function_error",
    }
    assert caught.value.response.headers["x-request-id"]


def test_exception_mid_stream_is_raised_by_the_sdk(served):
    with sdk(served, "explode_midway") as client:
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        first = next(stream)
        with pytest.raises(openai.APIError) as caught:
            next(stream)
    assert first.choices[0].delta.content == "partial "
    assert caught.value.message == "explode_midway() raised RuntimeError: the model fell over"
    assert caught.value.body == {
        "message": "explode_midway() raised RuntimeError: the model fell over",
        "type": "server_error",
        "param": None,
        "code": "function_error",
    }


def test_exception_mid_stream_sends_an_error_chunk_then_done(served):
    response = post(served, "explode_midway/chat/completions", {"messages": MESSAGES, "stream": True})
    data = sse_data(response.text)
    assert json.loads(data[-2]) == {
        "error": {
            "message": "explode_midway() raised RuntimeError: the model fell over",
            "type": "server_error",
            "param": None,
            "code": "function_error",
        }
    }
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1


def test_body_that_is_not_json_is_400(served):
    with served.client() as client:
        response = client.post(f"{served.base}/run/chat/completions", content=b"{nope")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "The request body is not valid JSON: key must be a string at line 1 column 2.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
    }
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"messages": [], "stream": "yes"}, "stream", "stream must be true or false, got 'yes'."),
        ([1, 2], None, "run(): the request body must be a JSON object of parameters, got list."),
    ],
)
def test_bad_stream_flag_or_body_names_the_problem(served, body, param, message):
    response = post(served, "run/chat/completions", body)
    assert response.status_code in (400, 422)
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["message"] == message


def test_unknown_encoding_format_is_400(served):
    response = post(served, "embed/embeddings", {"input": "x", "encoding_format": "int8"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": 'encoding_format must be "float" or "base64", got \'int8\'.',
        "type": "invalid_request_error",
        "param": "encoding_format",
        "code": "bad_request",
    }


def test_wrong_methods_are_405_with_allow(served):
    with served.client() as client:
        get = client.get(f"{served.base}/run/chat/completions")
        post_models = client.post(f"{served.base}/run/models", json={})
    assert get.status_code == 405
    assert get.headers["allow"] == "POST"
    assert get.json()["error"]["message"] == "Use POST for run/chat/completions; got GET."
    assert get.json()["error"]["type"] == "invalid_request_error"
    assert post_models.status_code == 405
    assert post_models.headers["allow"] == "GET"
    assert post_models.json()["error"]["code"] == "method_not_allowed"


# Async runs


def test_async_chat_run_polls_to_what_the_sync_call_answers(served):
    body = {"model": "m", "messages": MESSAGES, "user": "dropped"}
    submitted = post(served, "run/chat/completions?async=true", body)
    assert submitted.status_code == 202
    run_id = submitted.json()["run_id"]
    assert submitted.headers["location"] == f"/v4/p-local/openai-app/runs/{run_id}"
    run = poll_until_done(served, run_id)
    assert run["status"] == "completed"
    sync = post(served, "run/chat/completions", body).json()
    assert run["result"] == {**sync, "id": f"chatcmpl-{run_id}"}
    assert run["result"]["choices"][0]["message"]["content"] == "hello there world "
    assert run["result"]["usage"]["total_tokens"] == 7  # stream=False reached the function


def test_async_submission_through_the_sdk_raw_response(served):
    with sdk(served, "chat_text") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, extra_query={"async": "true"}
        )
    assert raw.status_code == 202
    run = poll_until_done(served, json.loads(raw.text)["run_id"])
    assert run["result"]["object"] == "chat.completion"
    assert run["result"]["choices"][0]["message"]["content"] == "plain hello there world"


def test_async_embeddings_run_is_wrapped_like_the_sync_answer(served):
    body = {"model": "m", "input": ["ab"], "encoding_format": "base64"}
    run_id = post(served, "embed/embeddings?async=true", body).json()["run_id"]
    run = poll_until_done(served, run_id)
    assert run["result"] == post(served, "embed/embeddings", body).json()
    assert struct.unpack("<3f", base64.b64decode(run["result"]["data"][0]["embedding"])) == (2.0, 0.0, 0.5)


def test_async_run_stores_the_filtered_body_and_keeps_its_events(served):
    body = {"model": "m", "messages": MESSAGES, "seed": 3, "stream": False}
    run_id = post(served, "chat_dicts/chat/completions?async=true", body).json()["run_id"]
    assert poll_until_done(served, run_id)["result"]["choices"][0]["message"]["content"] == "HELLOTHEREWORLD"
    stored = _stored_body(served, run_id)
    assert json.loads(stored) == {"messages": MESSAGES}  # model, seed and stream were dropped
    with served.client() as client:
        events = client.get(f"{served.base}/runs/{run_id}/events")
    assert events.status_code == 200
    assert events.text.count("data: ") == 5  # the generator's chunks, for replay


def _stored_body(served, run_id: str) -> bytes:
    """The body the run was stored with, read from the store's file."""
    path = served.state.settings.store.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        [body] = conn.execute(f"SELECT body FROM {RUNS} WHERE run_id = ?", (run_id,)).fetchone()
    return bytes(body)


def test_stream_with_async_is_400_pointing_to_events(served):
    with sdk(served, "run") as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_query={"async": "true"}
        )
    assert caught.value.body == {
        "message": '"stream": true cannot be combined with ?async=true: an async run answers 202 at once '
        'and runs later. Submit it with "stream": false, then read its chunks as they come from '
        "GET /v4/p-local/openai-app/runs/<run_id>/events, or poll GET /v4/p-local/openai-app/runs/<run_id> "
        "for the whole completion.",
        "type": "invalid_request_error",
        "param": "stream",
        "code": "bad_request",
    }


def test_async_invalid_arguments_are_422_and_nothing_runs(served):
    response = post(served, "needs_prompt/chat/completions?async=true", {"messages": MESSAGES})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "prompt"


def test_failed_async_run_reports_the_error(served):
    run_id = post(served, "explode/chat/completions?async=true", {"messages": MESSAGES}).json()["run_id"]
    run = poll_until_done(served, run_id)
    assert run["status"] == "failed"
    assert run["error"] == {"type": "ValueError", "message": "no GPU today"}


def test_sync_call_with_webhook_delivers_the_shaped_answer(served, webhook_receiver):
    body = {"model": "m", "messages": MESSAGES}
    response = post(served, f"chat_text/chat/completions?webhookEndpoint={webhook_receiver.url}", body)
    assert response.status_code == 200
    [hook] = webhook_receiver.wait_for(1)
    payload = hook.json()
    assert payload["run_id"] == response.headers["x-request-id"]
    assert payload["status"] == "completed"
    assert payload["result"] == response.json()


# Disconnects


@pytest.mark.parametrize("function", ["endless", "aendless"])
def test_client_disconnect_closes_the_generator(served, tmp_path: Path, function):
    marker = tmp_path / "closed"
    with sdk(served, function) as client:
        stream = client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_body={"marker": str(marker)}
        )
        assert next(stream).choices[0].delta.content == "tick "
        stream.close()
    wait_for(marker.exists, timeout=5, what=f"{function}() to be closed")
    assert marker.read_text() == "closed"
    time.sleep(0.2)
    assert served.state.gate.active == 0  # the slot was given back


# Time limit


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    """openai_app with response_grace_period = 1."""
    app_dir = tmp_path_factory.mktemp("impatient") / "openai_app"
    shutil.copytree(APPS / "openai_app", app_dir)
    toml = app_dir / "cerebrium.toml"
    toml.write_text(toml.read_text() + "response_grace_period = 1\n")
    with serving(app_dir) as served:
        yield served


def test_stream_past_the_time_limit_ends_with_a_timeout_error_then_done(impatient, tmp_path: Path):
    body = {"messages": MESSAGES, "marker": str(tmp_path / "closed"), "stream": True}
    data = sse_data(post(impatient, "endless/chat/completions", body).text)
    assert json.loads(data[-2]) == {
        "error": {
            "message": "endless() streamed past response_grace_period (1 s); the stream was ended.",
            "type": "server_error",
            "param": None,
            "code": "timeout",
        }
    }
    assert data[-1] == "[DONE]"
    wait_for((tmp_path / "closed").exists, timeout=5, what="endless() to be closed")


def test_call_past_the_time_limit_is_504_and_the_generator_is_closed(impatient, tmp_path: Path):
    with sdk(impatient, "aendless") as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"marker": str(tmp_path / "x")}
        )
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "timeout"
    assert caught.value.body["message"].startswith(
        "aendless() did not finish within response_grace_period (1 s)"
    )
    wait_for((tmp_path / "x").exists, timeout=5, what="aendless() to be closed")  # cancelled at the limit
