"""OpenAI wire shapes (pure): request arguments, aggregated completions, embeddings, stream frames."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from cortex.errors import IncompatibleResultError
from cortex.streaming import encode_event, is_pre_framed

ShapeKind = Literal["chat", "completion", "embeddings"]
EncodingFormat = Literal["float", "base64"]

MODEL_ATTRIBUTE = "__cortex_model__"  # on a function (or main.py): the model GET .../models lists
OWNER = "cortex"
DONE_FRAME = b"data: [DONE]\n\n"
_DONE_EVENT = re.compile(rb"(?:^|\n)data: ?\[DONE\][ \t]*(?:\r?\n|$)")


class ResultShape(BaseModel):
    """How a function's result becomes the answer of an OpenAI route; stored with async runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ShapeKind
    model: str  # reported when the function's output names none
    encoding_format: EncodingFormat = "float"  # embeddings only


class _Request(BaseModel):
    """What OpenAI clients send. It documents the routes (/openapi.json); the routes themselves
    pass the body's keys to the function (see select_arguments), which validates them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The model asked for; passed on only to a function that declares it.")


class _Generation(_Request):
    stream: bool | None = Field(None, description="true: Server-Sent Events, ending with `data: [DONE]`.")
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None


class ChatRequestMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatRequestMessage]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingsRequest(_Request):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: EncodingFormat | None = Field(
        None, description="float (default) or base64 of little-endian float32."
    )
    dimensions: int | None = None
    user: str | None = None


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
