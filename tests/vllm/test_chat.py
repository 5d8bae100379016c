"""templates/vllm on real vLLM (CPU) with a tiny random Llama: chunks, sampling, structured output, aborts."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import wait_for
from tests.vllm.conftest import (
    SERVED_LLM_NAME,
    AppServer,
    has_openai_routes,
    openai_client,
    skip_unless_installed,
    sse_chunks,
)

skip_unless_installed("vllm")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HI = [{"role": "user", "content": "hi"}]
SSE = {"accept": "text/event-stream"}
HI_PROMPT_TOKENS = 5  # <s> <|user|> hi <|end|> <|assistant|>


def stream_chat(server: AppServer, **body: object) -> tuple[str, list[dict]]:
    """(run id, chunks) of one streamed call to run()."""
    with server.client() as client, client.stream("POST", "/run", json=body, headers=SSE) as response:
        assert response.status_code == 200, response.read()
        return response.headers["x-request-id"], sse_chunks(response)


def content(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def test_stream_sends_role_then_deltas_then_finish_reason_then_usage(llm_server):
    run_id, chunks = stream_chat(
        llm_server, messages=HI, max_tokens=8, ignore_eos=True, seed=1, stream_options={"include_usage": True}
    )
    assert {c["id"] for c in chunks} == {f"chatcmpl-{run_id}"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {SERVED_LLM_NAME}
    first, *middle, last_choice, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in middle] == [None] * len(middle)
    assert last_choice["choices"][0]["finish_reason"] == "length"
    assert content(chunks)
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": HI_PROMPT_TOKENS, "completion_tokens": 8, "total_tokens": 13}


def test_stream_without_include_usage_ends_with_the_finish_reason(llm_server):
    _, chunks = stream_chat(llm_server, messages=HI, max_tokens=4, ignore_eos=True)
    assert "usage" not in chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_same_seed_gives_the_same_text(llm_server):
    body = {"messages": HI, "max_tokens": 12, "ignore_eos": True, "seed": 42, "temperature": 1.0}
    texts = {content(stream_chat(llm_server, **body)[1]) for _ in range(2)}
    assert len(texts) == 1
    greedy = {"messages": HI, "max_tokens": 12, "ignore_eos": True, "temperature": 0.0}
    assert content(stream_chat(llm_server, **greedy)[1]) == content(stream_chat(llm_server, **greedy)[1])


def test_without_event_stream_the_chunks_come_back_as_a_list_with_usage(llm_server):
    with llm_server.client() as client:
        response = client.post(
            "/run", json={"messages": HI, "max_tokens": 6, "ignore_eos": True, "stream": False}
        )
    assert response.status_code == 200, response.text
    chunks = response.json()["result"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_stop_string_ends_the_text_before_it(llm_server):
    body = {"messages": HI, "max_tokens": 40, "ignore_eos": True, "temperature": 0.0}
    full = content(stream_chat(llm_server, **body)[1])
    stop = full[len(full) // 2 :][:3]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    _, chunks = stream_chat(llm_server, **body, stop=[stop])
    assert content(chunks) == full[: full.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_n_above_one_is_refused_with_what_to_do(llm_server):
    with llm_server.client() as client:
        response = client.post("/run", json={"messages": HI, "n": 2})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "type": "ValueError",
        "message": "n=2 is not supported: cortex.vllm returns one choice per request. "
        "Send n=1 (or leave it out) and make n requests instead.",
    }


def test_a_prompt_longer_than_the_model_takes_fails_before_any_chunk(llm_server):
    too_long = [{"role": "user", "content": "hello " * 5000}]
    with llm_server.client() as client:
        response = client.post("/run", json={"messages": too_long}, headers=SSE)
    first_event = response.text.split("\n\n")[0]
    assert first_event.startswith("event: error\n"), response.text[:500]
    assert "maximum context length is 4096 tokens" in json.loads(first_event.split("data: ", 1)[1])["message"]


def test_json_schema_response_format_constrains_the_text(llm_server):
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}}
    _, chunks = stream_chat(
        llm_server, messages=HI, max_tokens=64, seed=3, temperature=0.0, response_format=response_format
    )
    assert json.loads(content(chunks))["color"] in {"red", "blue"}


def test_text_completion_chunks(llm_server):
    body = {"prompt": "def main(", "max_tokens": 5, "seed": 1, "stream_options": {"include_usage": True}}
    with (
        llm_server.client() as client,
        client.stream("POST", "/complete", json=body, headers=SSE) as response,
    ):
        run_id, chunks = response.headers["x-request-id"], sse_chunks(response)
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert {c["id"] for c in chunks} == {f"cmpl-{run_id}"}
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] in {"length", "stop"}
    assert chunks[-1]["usage"]["prompt_tokens"] > 0


def test_closing_a_stream_aborts_the_request_in_vllm(llm_server):
    body = {"messages": HI, "max_tokens": 4000, "ignore_eos": True}
    with llm_server.client() as client, client.stream("POST", "/run", json=body, headers=SSE) as response:
        run_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        for _ in range(10):
            next(lines)  # a few tokens in: the request is running in the engine
    # Leaving the block closed the connection; Cortex closes the generator, which aborts in vLLM.
    aborted = f"vLLM request {run_id} aborted: its caller stopped before it finished."
    wait_for(lambda: aborted in llm_server.process.output, timeout=15, what="the abort in the server log")
    started = time.monotonic()
    _, chunks = stream_chat(llm_server, messages=HI, max_tokens=8, ignore_eos=True)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert time.monotonic() - started < 10, "the next request waited: the aborted one may still be running"


openai_routes = pytest.mark.skipif(
    not has_openai_routes(), reason="cortex.openai_compat routes are not in this build yet"
)


@openai_routes
def test_openai_client_chat_without_streaming(llm_server):
    with openai_client(llm_server) as client:
        reply = client.chat.completions.create(
            model=SERVED_LLM_NAME, messages=HI, max_tokens=6, seed=1, extra_body={"ignore_eos": True}
        )
    assert reply.object == "chat.completion"
    assert reply.model == SERVED_LLM_NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == HI_PROMPT_TOKENS
    assert reply.usage.completion_tokens == 6


@openai_routes
def test_openai_client_chat_streaming_matches_the_whole_answer(llm_server):
    request = {"model": SERVED_LLM_NAME, "messages": HI, "max_tokens": 6, "seed": 1}
    with openai_client(llm_server) as client:
        whole = client.chat.completions.create(**request).choices[0].message.content
        stream = client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == HI_PROMPT_TOKENS + chunks[-1].usage.completion_tokens


@openai_routes
def test_openai_client_text_completions(llm_server):
    with openai_client(llm_server, "complete") as client:
        answer = client.completions.create(model=SERVED_LLM_NAME, prompt="def main(", max_tokens=5, seed=1)
        streamed = list(
            client.completions.create(
                model=SERVED_LLM_NAME, prompt="def main(", max_tokens=5, seed=1, stream=True
            )
        )
    assert answer.object == "text_completion"
    assert answer.choices[0].text
    assert "".join(c.choices[0].text for c in streamed if c.choices) == answer.choices[0].text


@openai_routes
def test_openai_client_closing_a_stream_aborts_it(llm_server):
    with openai_client(llm_server) as client:
        stream = client.chat.completions.create(
            model=SERVED_LLM_NAME, messages=HI, max_tokens=4000, stream=True, extra_body={"ignore_eos": True}
        )
        for _, _chunk in zip(range(5), stream, strict=False):
            pass
        run_id = stream.response.headers["x-request-id"]
        stream.close()
    aborted = f"vLLM request {run_id} aborted: its caller stopped before it finished."
    wait_for(lambda: aborted in llm_server.process.output, timeout=15, what="the abort in the server log")


@openai_routes
def test_openai_client_lists_the_served_model(llm_server):
    with openai_client(llm_server) as client:
        assert [m.id for m in client.models.list()] == [SERVED_LLM_NAME]
