"""OpenAI wire shapes (pure): request arguments, aggregated completions, embeddings, stream frames."""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError

from cortex.errors import FunctionReportedError, IncompatibleResultError
from cortex.streaming import encode_event, is_pre_framed

ShapeKind = Literal["chat", "completion", "embeddings"]
EncodingFormat = Literal["float", "base64"]

MODEL_ATTRIBUTE = "__cortex_model__"  # on a function (or main.py): the model GET .../models lists
OWNER = "cortex"
DONE_FRAME = b"data: [DONE]\n\n"
_DONE_EVENT = re.compile(rb"(?:^|\n)data: ?\[DONE\][ \t]*(?:\r?\n|$)")
_EVENT_SEPARATOR = re.compile(r"\r?\n\r?\n")

Piece = dict[str, Any] | str  # one parsed chunk: an OpenAI object, or plain text


class ResultShape(BaseModel):
    """How a function's result becomes the answer of an OpenAI route; stored with async runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ShapeKind
    model: str  # reported when the function's output names none
    encoding_format: EncodingFormat = "float"  # embeddings only


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ChatMessage(_Wire):
    role: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(_Wire):
    index: int
    message: ChatMessage
    finish_reason: str


class ChatCompletion(_Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, Any] | None = None
    system_fingerprint: str | None = None


class TextChoice(_Wire):
    index: int
    text: str
    finish_reason: str


class TextCompletion(_Wire):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: dict[str, Any] | None = None
    system_fingerprint: str | None = None


class EmbeddingUsage(_Wire):
    prompt_tokens: int = 0
    total_tokens: int = 0


class Embedding(_Wire):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingList(_Wire):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage = EmbeddingUsage()


class ModelCard(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = OWNER


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def encode_error(status: int, message: str, code: str | None, param: str | None = None) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as JSON bytes (param and code may be null)."""
    detail = ErrorDetail(message=message, type=error_type(status), param=param, code=code)
    return ErrorBody(error=detail).model_dump_json().encode()


def function_error_message(function: str, exc: BaseException) -> str:
    if isinstance(exc, PydanticSerializationError):
        return f"{function}() yielded a chunk that cannot be written as JSON: {exc}"
    return f"{function}() raised {type(exc).__name__}: {exc}"


def select_arguments(
    body: Mapping[str, Any], accepted: Collection[str], takes_extra: bool
) -> tuple[dict[str, Any], list[str]]:
    """The body's keys the function declares (every key when it takes **kwargs), and those dropped."""
    if takes_extra:
        return dict(body), []
    kept = {name: value for name, value in body.items() if name in accepted}
    return kept, [name for name in body if name not in accepted]


def served_model(func: Any, module: Any, fallback: str) -> str:
    """`func.__cortex_model__`, else main.py's module-level `__cortex_model__`, else `fallback`."""
    for owner in (func, module):
        name = getattr(owner, MODEL_ATTRIBUTE, None)
        if isinstance(name, str) and name:
            return name
    return fallback


def model_list(model: str, created: int) -> dict[str, Any]:
    return ModelList(data=[ModelCard(id=model, created=created)]).to_dict()


def model_card(model: str, created: int) -> dict[str, Any]:
    return ModelCard(id=model, created=created).to_dict()


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


def shape_embeddings(result: Any, model: str, encoding_format: EncodingFormat, function: str) -> Any:
    """An OpenAI embeddings object as it is; a list of vectors (or one vector) wrapped into one."""
    if isinstance(result, Mapping) and "data" in result:
        return result
    vectors = _vectors(result, function)
    data = [Embedding(index=i, embedding=encode_vector(v, encoding_format)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=model).to_dict()


def encode_vector(vector: list[float], encoding_format: EncodingFormat) -> list[float] | str:
    """As floats, or base64 of little-endian float32 (what OpenAI sends for `base64`)."""
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _vectors(result: Any, function: str) -> list[list[float]]:
    value = _plain(result)
    if isinstance(value, list | tuple):
        if value and all(_is_number(x) for x in value):
            return [[float(x) for x in value]]
        rows = [_plain(row) for row in value]
        if all(isinstance(row, list | tuple) and all(_is_number(x) for x in row) for row in rows):
            return [[float(x) for x in row] for row in rows]
    raise IncompatibleResultError(
        f"{function}() returned {_describe(result)}; an embeddings route needs a list of vectors "
        "(lists of numbers), one vector, or an OpenAI embeddings object with `data`."
    )


def _plain(value: Any) -> Any:
    """numpy arrays and torch tensors as lists."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, list | tuple) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = repr(value)
    return (
        f"{text[:57]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"
    )


class StreamFramer:
    """SSE frames for an OpenAI stream: ends with `data: [DONE]` exactly once.

    Pre-framed `data:` strings pass verbatim and dicts become `data: <json>`; plain text becomes
    a chunk with that content, so a generator of words still streams to OpenAI clients. Frames
    after the function's own `[DONE]` are dropped (clients stop reading there).
    """

    def __init__(self, kind: ShapeKind, function: str, run_id: str, model: str, created: int) -> None:
        self.kind = kind
        self.function = function
        self.run_id = run_id
        self.model = model
        self.created = created
        self.done = False

    def encode(self, chunk: Any) -> bytes:
        if self.done:
            return b""
        if isinstance(chunk, str) and not is_pre_framed(chunk):
            chunk = self._text_chunk(chunk)
        frame = encode_event(chunk)
        if _DONE_EVENT.search(frame):
            self.done = True
        return frame

    def encode_error(self, exc: BaseException, run_id: str) -> bytes:
        """An OpenAI error chunk, which the SDK raises as APIError; the terminator follows."""
        return self.error_frame(function_error_message(self.function, exc), "function_error")

    def error_frame(self, message: str, code: str) -> bytes:
        """`data: {"error": {...}}`; nothing once the stream is done (clients stopped reading)."""
        if self.done:
            return b""
        return b"data: " + encode_error(500, message, code) + b"\n\n"

    def terminator(self) -> bytes:
        """`data: [DONE]` unless the function sent it."""
        if self.done:
            return b""
        self.done = True
        return DONE_FRAME

    def _text_chunk(self, text: str) -> dict[str, Any]:
        if self.kind == "chat":
            kind, prefix = "chat.completion.chunk", "chatcmpl"
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        else:
            kind, prefix = "text_completion", "cmpl"
            choice = {"index": 0, "text": text, "finish_reason": None}
        return {
            "id": f"{prefix}-{self.run_id}",
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
