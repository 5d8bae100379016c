"""Cerebrium-style LLM and embedding functions, called through the OpenAI routes."""
import asyncio
import json
import time
from pathlib import Path


def _last_words(messages: list) -> list[str]:
    return str(messages[-1]["content"]).split()


def _chunk(run_id: str, model: str, delta: dict, finish_reason=None) -> dict:
    return {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


async def run(messages: list, model: str, run_id: str, stream: bool = True, temperature: float = 0.8,
              top_p: float = 0.95, max_tokens: int = 4096):
    """What Cerebrium's vLLM examples look like: pre-framed chunks and their own [DONE]."""
    yield f"data: {json.dumps(_chunk(run_id, model, {'role': 'assistant', 'content': ''}))}\n\n"
    for word in _last_words(messages)[:max_tokens]:
        await asyncio.sleep(0)
        yield f"data: {json.dumps(_chunk(run_id, model, {'content': word + ' '}))}\n\n"
    yield f"data: {json.dumps(_chunk(run_id, model, {}, 'stop'))}\n\n"
    if not stream:  # as vLLM does: usage comes with a whole answer
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        yield f"data: {json.dumps({**_chunk(run_id, model, {}), 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


run.__cortex_model__ = "echo-llm"


def chat_dicts(messages: list):
    """A sync generator of dict chunks, without [DONE] and without a `stream` parameter."""
    yield {"object": "chat.completion.chunk", "model": "dict-llm", "created": 1,
           "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    for word in _last_words(messages):
        yield {"object": "chat.completion.chunk", "model": "dict-llm", "created": 1,
               "choices": [{"index": 0, "delta": {"content": word.upper()}, "finish_reason": None}]}
    yield {"object": "chat.completion.chunk", "model": "dict-llm", "created": 1,
           "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}


def chat_words(messages: list):
    """Plain text chunks: each becomes a chunk with that content."""
    for word in _last_words(messages):
        yield word + "|"


def chat_dict(messages: list, model: str = "unset", temperature: float = 1.0):
    """A whole chat.completion; its content says what the function received."""
    content = f"model={model} temperature={temperature} words={len(_last_words(messages))}"
    return {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 1700000001,
        "model": "dict-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


async def chat_text(messages: list) -> str:
    return "plain " + " ".join(_last_words(messages))


def with_kwargs(messages: list, **kwargs):
    return "keys: " + ",".join(sorted(kwargs))


def needs_prompt(prompt: str, messages: list):
    return prompt


def explode(messages: list):
    raise ValueError("no GPU today")


async def explode_midway(messages: list):
    yield _chunk("x", "m", {"role": "assistant", "content": "partial "})
    raise RuntimeError("the model fell over")


def endless(messages: list, marker: str):
    try:
        while True:
            yield _chunk("x", "m", {"content": "tick "})
            time.sleep(0.01)
    finally:
        Path(marker).write_text("closed")


async def aendless(messages: list, marker: str):
    try:
        while True:
            yield f"data: {json.dumps(_chunk('x', 'm', {'content': 'tick '}))}\n\n"
            await asyncio.sleep(0.01)
    finally:
        Path(marker).write_text("closed")


async def complete(prompt: str, run_id: str, stream: bool = False, max_tokens: int = 16):
    for word in prompt.split()[:max_tokens]:
        yield {"id": f"cmpl-{run_id}", "object": "text_completion", "created": 2, "model": "text-llm",
               "choices": [{"index": 0, "text": word + " ", "finish_reason": None, "logprobs": None}]}
    yield {"id": f"cmpl-{run_id}", "object": "text_completion", "created": 2, "model": "text-llm",
           "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]}


def embed(input: str | list[str]):
    """One vector per text: [length, position, 0.5] (exact in float32)."""
    texts = [input] if isinstance(input, str) else input
    return [[float(len(text)), float(i), 0.5] for i, text in enumerate(texts)]


def embed_one(input: str):
    return [0.25, -1.5, 3.0]


def embed_full(input: list[str], model: str):
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [1.0, 2.0]}],
        "model": model,
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


def embed_wrong(input: str):
    return "not a vector"
