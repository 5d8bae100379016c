"""Every kind of function, for tests/e2e/test_fuzz.py: none of them raises for arguments that
validate, whatever their values, so any 5xx the fuzzer sees is Cortex's own."""
import asyncio
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field


class Address(BaseModel):
    street: str
    city: str = "Cape Town"
    postcode: Optional[str] = None


class Person(BaseModel):
    name: str = Field(min_length=1)
    age: int = Field(ge=0, le=150)
    address: Address
    emails: list[str] = []


def echo(text: str, times: int = 1, loud: bool = False, ratio: float = 0.5, tags: list[str] | None = None):
    """Sync, scalar parameters with defaults."""
    return {"text": text.upper() if loud else text, "times": times, "ratio": ratio, "tags": tags or []}


async def total(values: list[int], start: int = 0) -> dict[str, int]:
    """Async; the numbers are counted, never added, so no size overflows."""
    return {"count": len(values), "start": start}


def register(person: Person, labels: dict[str, int] | None = None) -> Person:
    """Nested pydantic models in and out."""
    return person


def optional(note: str | None = None, count: Optional[int] = None, mode: Literal["fast", "slow"] = "fast"):
    return {"note": note, "count": count, "mode": mode}


def count(to: int = 3):
    """A sync generator (at most 5 chunks)."""
    for i in range(max(0, min(to, 5))):
        yield {"i": i}


async def words(text: str, limit: int = 5):
    """An async generator of at most `limit` (<= 10) words."""
    for word in text.split()[: max(0, min(limit, 10))]:
        await asyncio.sleep(0)
        yield word


def whoami(run_id: str, tag: str = ""):
    return {"run_id": run_id, "tag": tag}


def anything(**extra: Any):
    return sorted(extra)


def ping() -> str:
    return "pong"


def chat(messages: list[dict[str, Any]], model: str = "fuzz-llm", stream: bool = False, max_tokens: int = 8):
    """A chat model as a generator of text chunks: the last message's words, echoed."""
    last = messages[-1].get("content") if messages else ""
    for word in str(last).split()[: max(0, min(max_tokens, 8))]:
        yield word + " "


chat.__cortex_model__ = "fuzz-llm"


def chat_whole(messages: list[dict[str, Any]], temperature: float = 1.0):
    """A whole chat.completion dict, as a non-streaming LLM function returns one."""
    return {
        "id": "chatcmpl-fuzz",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "fuzz-whole",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{len(messages)} messages"},
                     "finish_reason": "stop"}],
    }


async def complete(prompt: str, max_tokens: int = 8):
    """An async generator of text_completion chunks."""
    for word in prompt.split()[: max(0, min(max_tokens, 8))]:
        yield {"object": "text_completion", "model": "fuzz-text",
               "choices": [{"index": 0, "text": word + " ", "finish_reason": None}]}


def embed(input: str | list[str]):
    """One small vector per text."""
    texts = [input] if isinstance(input, str) else input
    return [[float(len(text) % 97), float(i % 89), 0.5] for i, text in enumerate(texts)]
