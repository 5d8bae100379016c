"""Joining a function's chunks into one OpenAI answer (pure): what a non-streaming call returns."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from cortex.errors import FunctionReportedError, IncompatibleResultError
from cortex.openai_compat.models import (
    ChatChoice,
    ChatCompletion,
    ChatMessage,
    ResultShape,
    TextChoice,
    TextCompletion,
    shape_embeddings,
)
from cortex.streaming import is_pre_framed

_EVENT_SEPARATOR = re.compile(r"\r?\n\r?\n")

Piece = dict[str, Any] | str  # one parsed chunk: an OpenAI object, or plain text


def apply_shape(shape: ResultShape, result: Any, function: str, run_id: str, created: int) -> Any:
    """What an OpenAI route answers for `result` (a generator's result is its list of chunks).

    A dict or pydantic model is the answer as it is; text, a chunk or a list of chunks is
    aggregated into one `chat.completion` / `text_completion`; embeddings are wrapped.
    """
    if shape.kind == "embeddings":
        return shape_embeddings(result, shape.model, shape.encoding_format, function)
    if isinstance(result, Mapping | BaseModel):
        return result
    chunks = result if isinstance(result, list | tuple) else [result]
    pieces = [piece for chunk in chunks for piece in chunk_pieces(chunk, function)]
    if shape.kind == "chat":
        return aggregate_chat(pieces, function, f"chatcmpl-{run_id}", shape.model, created)
    return aggregate_completion(pieces, function, f"cmpl-{run_id}", shape.model, created)


def chunk_pieces(chunk: Any, function: str) -> list[Piece]:
    """A chunk as OpenAI objects or text: `data:` frames parsed, `[DONE]` and comments skipped."""
    if isinstance(chunk, BaseModel):
        return [chunk.model_dump(mode="json", exclude_none=True)]
    if isinstance(chunk, Mapping):
        return [dict(chunk)]
    if isinstance(chunk, bytes):
        chunk = chunk.decode("utf-8", errors="replace")
    if isinstance(chunk, str):
        return _frame_pieces(chunk) if is_pre_framed(chunk) else [chunk]
    raise IncompatibleResultError(
        f"{function}() produced a {type(chunk).__name__} where an OpenAI route needs a chunk: "
        "return or yield OpenAI chunk dicts, `data: {...}` strings, or plain text."
    )


def _frame_pieces(text: str) -> list[Piece]:
    pieces: list[Piece] = []
    for event in _EVENT_SEPARATOR.split(text):
        lines = [line[5:].removeprefix(" ") for line in event.splitlines() if line.startswith("data:")]
        data = "\n".join(lines)
        if not lines or data.strip() == "[DONE]":
            continue
        try:
            value = json.loads(data)
        except ValueError:
            value = data  # not JSON: text, as a plain string chunk is
        pieces.append(value if isinstance(value, dict | str) else data)
    return pieces


@dataclass
class _Choice:
    role: str = "assistant"
    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None

    def absorb(self, choice: Mapping[str, Any]) -> None:
        message = choice.get("delta") or choice.get("message") or {}
        if isinstance(message, Mapping):
            if isinstance(message.get("role"), str):
                self.role = message["role"]
            if isinstance(message.get("content"), str):
                self.text.append(message["content"])
            for position, call in enumerate(message.get("tool_calls") or []):
                if isinstance(call, Mapping):
                    self._merge_tool_call(position, call)
        if isinstance(choice.get("text"), str):
            self.text.append(choice["text"])
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]

    def _merge_tool_call(self, position: int, call: Mapping[str, Any]) -> None:
        """Streamed tool calls arrive in pieces keyed by `index`: the arguments are concatenated."""
        index = call.get("index")
        merged = self.tool_calls.setdefault(
            index if isinstance(index, int) else position,
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        for key in ("id", "type"):
            if isinstance(call.get(key), str):
                merged[key] = call[key]
        function = call.get("function")
        if isinstance(function, Mapping):
            if isinstance(function.get("name"), str) and function["name"]:
                merged["function"]["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                merged["function"]["arguments"] += function["arguments"]

    def final_reason(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


@dataclass
class _Totals:
    """Everything the chunks of one completion said, merged."""

    id: str | None = None
    model: str | None = None
    created: int | None = None
    usage: dict[str, Any] | None = None
    system_fingerprint: str | None = None
    choices: dict[int, _Choice] = field(default_factory=dict)

    def absorb(self, piece: Piece, function: str) -> None:
        if isinstance(piece, str):
            self.choices.setdefault(0, _Choice()).text.append(piece)
            return
        if piece.get("error") and not piece.get("choices"):
            raise FunctionReportedError(_reported_message(function, piece["error"]))
        for key, kind in (("id", str), ("model", str), ("created", int), ("system_fingerprint", str)):
            if getattr(self, key) is None and isinstance(piece.get(key), kind):
                setattr(self, key, piece[key])
        if isinstance(piece.get("usage"), dict):
            self.usage = piece["usage"]
        for choice in piece.get("choices") or []:
            if isinstance(choice, Mapping):
                index = choice.get("index")
                self.choices.setdefault(index if isinstance(index, int) else 0, _Choice()).absorb(choice)

    def sorted_choices(self) -> list[tuple[int, _Choice]]:
        return sorted((self.choices or {0: _Choice()}).items())


def _reported_message(function: str, error: Any) -> str:
    message = error.get("message") if isinstance(error, Mapping) else error
    return f"{function}() sent an error instead of a completion: {message}"


def _merge(pieces: list[Piece], function: str) -> _Totals:
    totals = _Totals()
    for piece in pieces:
        totals.absorb(piece, function)
    return totals


def aggregate_chat(
    pieces: list[Piece], function: str, default_id: str, model: str, created: int
) -> dict[str, Any]:
    """`chat.completion.chunk`s (or text, or one whole `chat.completion`) -> one `chat.completion`."""
    if len(pieces) == 1 and isinstance(pieces[0], dict) and pieces[0].get("object") == "chat.completion":
        return pieces[0]
    totals = _merge(pieces, function)
    choices = []
    for index, choice in totals.sorted_choices():
        calls = [choice.tool_calls[key] for key in sorted(choice.tool_calls)] or None
        content = "".join(choice.text) if choice.text or not calls else None
        message = ChatMessage(role=choice.role, content=content, tool_calls=calls)
        choices.append(ChatChoice(index=index, message=message, finish_reason=choice.final_reason()))
    return ChatCompletion(
        id=totals.id or default_id,
        created=totals.created or created,
        model=totals.model or model,
        choices=choices,
        usage=totals.usage,
        system_fingerprint=totals.system_fingerprint,
    ).to_dict()


def aggregate_completion(
    pieces: list[Piece], function: str, default_id: str, model: str, created: int
) -> dict[str, Any]:
    """`text_completion` chunks (or chat chunks, or text) -> one `text_completion`."""
    totals = _merge(pieces, function)
    choices = [
        TextChoice(index=index, text="".join(choice.text), finish_reason=choice.final_reason())
        for index, choice in totals.sorted_choices()
    ]
    return TextCompletion(
        id=totals.id or default_id,
        created=totals.created or created,
        model=totals.model or model,
        choices=choices,
        usage=totals.usage,
        system_fingerprint=totals.system_fingerprint,
    ).to_dict()


def as_stream_chunk(answer: Any) -> Any:
    """A whole answer as the one chunk of a stream (a function that returns, called with stream)."""
    if not isinstance(answer, Mapping) or answer.get("object") != "chat.completion":
        return answer  # a text_completion is its own chunk shape
    choices = [
        {"index": c.get("index", 0), "delta": c.get("message", {}), "finish_reason": c.get("finish_reason")}
        for c in answer.get("choices") or []
        if isinstance(c, Mapping)
    ]
    return {**answer, "object": "chat.completion.chunk", "choices": choices}
