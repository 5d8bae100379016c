"""`/v4/{project}/{app}/{fn}/chat/completions`, `completions`, `embeddings`, `models`: OpenAI's API.

The official SDKs work with `base_url=".../{fn}"`. The JSON body becomes the function's keyword
arguments, minus the OpenAI parameters it does not declare; answers, streams and errors have
OpenAI's shapes. `?async=true` submits a durable run whose result is what the sync call answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticSerializationError, from_json
from starlette.types import Receive, Scope, Send

from cortex.concurrency import DeadlineExceeded, RunClock, run_with_deadline
from cortex.discovery import FunctionKind, FunctionSpec
from cortex.errors import (
    BadRequestError,
    ClientDisconnectedError,
    FunctionReportedError,
    IncompatibleResultError,
    InvalidJSONError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    RequestError,
    StoreError,
    ValidationFailedError,
)
from cortex.invocation import invoke, open_stream, parse_arguments
from cortex.jobs.models import RunError, RunRequest, finished
from cortex.openai_compat.aggregate import apply_shape, as_stream_chunk
from cortex.openai_compat.models import (
    DONE_FRAME,
    EncodingFormat,
    ResultShape,
    ShapeKind,
    StreamFramer,
    encode_error,
    function_error_message,
    model_card,
    model_list,
    select_arguments,
    served_model,
)
from cortex.responses import SSE_HEADERS, read_request, result_status, send_json, wait_for_disconnect
from cortex.run_routes import CallOptions, parse_call_options
from cortex.serialization import encode_json
from cortex.state import NOT_READY_MESSAGE, JobsRuntime, ServingState
from cortex.streaming import encode_event, stream_async_generator, stream_sync_generator

logger = logging.getLogger("cortex.openai")

STREAM_PARAMETER = "stream"


class Endpoint(enum.Enum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MODELS = "models"

    @property
    def shape_kind(self) -> ShapeKind:
        kinds: dict[Endpoint, ShapeKind] = {
            Endpoint.CHAT: "chat",
            Endpoint.COMPLETIONS: "completion",
            Endpoint.EMBEDDINGS: "embeddings",
        }
        return kinds[self]

    @property
    def method(self) -> str:
        return "GET" if self is Endpoint.MODELS else "POST"


_PATHS = {
    ("chat", "completions"): Endpoint.CHAT,
    ("completions",): Endpoint.COMPLETIONS,
    ("embeddings",): Endpoint.EMBEDDINGS,
    ("embedding",): Endpoint.EMBEDDINGS,  # Cerebrium's spelling
    ("models",): Endpoint.MODELS,
}


@dataclass(frozen=True)
class OpenAIPath:
    function: str
    endpoint: Endpoint
    model_id: str | None = None  # GET {fn}/models/{model_id}


def match_openai_path(rest: list[str]) -> OpenAIPath | None:
    """`[fn, "chat", "completions"]` and the like (a trailing slash allowed); None for other paths."""
    if len(rest) < 2:
        return None
    tail = tuple(rest[1:-1] if rest[-1] == "" else rest[1:])
    endpoint = _PATHS.get(tail)
    if endpoint is not None:
        return OpenAIPath(rest[0], endpoint)
    if len(tail) > 1 and tail[0] == "models":
        return OpenAIPath(rest[0], Endpoint.MODELS, "/".join(tail[1:]))  # model ids may hold a `/`
    return None


class OpenAIRoutes:
    """The OpenAI routes of every function; called by FunctionRoutes once project and app match."""

    def __init__(self, state: ServingState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.started = int(clock())  # `created` of the models listed

    async def handle(self, scope: Scope, receive: Receive, send: Send, path: OpenAIPath, run_id: str) -> None:
        try:
            spec = self._function(path.function)
            method = path.endpoint.method
            if scope["method"] != method:
                where = f"{spec.name}/{path.endpoint.value}"
                raise MethodNotAllowedError(f"Use {method} for {where}; got {scope['method']}.")
            if path.endpoint is Endpoint.MODELS:
                await self._models(spec, path.model_id, run_id, send)
            else:
                await self._post(spec, path.endpoint, scope, receive, send, run_id)
        except RequestError as exc:
            await _send_request_error(send, exc, run_id, path.endpoint.method)
        except ClientDisconnectedError:
            return
        except StoreError as exc:
            logger.error("run %s: %s", run_id, exc)
            body = encode_error(503, exc.message, "store_unavailable")
            await send_json(send, 503, body, run_id, [(b"retry-after", b"5")])

    def _function(self, name: str) -> FunctionSpec:
        registry = self.state.registry
        if registry is None:
            raise NotReadyError(NOT_READY_MESSAGE)
        spec = registry.functions.get(name)
        if spec is None:
            public = ", ".join(registry.functions) or "none"
            raise NotFoundError(f"No function '{name}' in main.py. Public functions: {public}.")
        return spec

    def _model(self, spec: FunctionSpec) -> str:
        registry = self.state.registry
        return served_model(spec.func, None if registry is None else registry.module, self.state.app_name)

    def _jobs(self) -> JobsRuntime:
        if self.state.jobs is None:
            raise NotReadyError(NOT_READY_MESSAGE)
        return self.state.jobs

    async def _models(self, spec: FunctionSpec, model_id: str | None, run_id: str, send: Send) -> None:
        model = self._model(spec)
        if model_id is None:
            body = model_list(model, self.started)
        elif model_id == model:
            body = model_card(model, self.started)
        else:
            raise NotFoundError(f"No model '{model_id}': {spec.name}() serves '{model}'.")
        await send_json(send, 200, encode_json(body), run_id)

    async def _post(
        self, spec: FunctionSpec, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send, run_id: str
    ) -> None:
        raw, _ = await read_request(scope, receive, self.state.settings.max_body_bytes)
        request = _json_object(spec, raw)
        options = parse_call_options(scope)
        stream = endpoint is not Endpoint.EMBEDDINGS and _wants_stream(request)
        if stream and (options.run_async or options.webhook_url is not None):
            raise BadRequestError(
                _no_stream_with_options(options, self.state.base_path), _param(STREAM_PARAMETER)
            )
        body = self._arguments(spec, endpoint, request, raw)
        kwargs = parse_arguments(spec, body)
        encoding: EncodingFormat = _encoding_format(request) if endpoint is Endpoint.EMBEDDINGS else "float"
        shape = ResultShape(kind=endpoint.shape_kind, model=self._model(spec), encoding_format=encoding)
        if options.run_async or options.webhook_url is not None:
            await self._with_options(spec, kwargs, body, run_id, options, shape, send)
        elif stream and spec.kind.is_streaming:
            await self._stream(spec, kwargs, shape, run_id, receive, send)
        else:
            await self._call(spec, kwargs, run_id, shape, send, as_stream=stream)

    def _arguments(
        self, spec: FunctionSpec, endpoint: Endpoint, request: dict[str, Any], raw: bytes
    ) -> bytes:
        """The body the function is called with: OpenAI parameters it does not declare dropped.

        A missing `stream` is false, as in OpenAI's API (the SDK leaves it out unless streaming),
        and a function that declares `stream` is told so.
        """
        kept, dropped = select_arguments(request, spec.parameter_names, spec.takes_extra_kwargs)
        if dropped:
            logger.debug("%s(): dropped parameters it does not declare: %s", spec.name, ", ".join(dropped))
        missing_stream = endpoint is not Endpoint.EMBEDDINGS and STREAM_PARAMETER not in request
        if missing_stream and STREAM_PARAMETER in spec.parameter_names:
            kept[STREAM_PARAMETER] = False
        elif not dropped:
            return raw  # as sent: nothing to take out or add
        return encode_json(kept)

    async def _with_options(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        body: bytes,
        run_id: str,
        options: CallOptions,
        shape: ResultShape,
        send: Send,
    ) -> None:
        """`?async=true` and/or `webhookEndpoint`: recorded in the job store with its shape."""
        jobs = self._jobs()
        request = await jobs.new_run(spec, body, run_id, options, shape.model_dump_json())
        if options.run_async:
            await jobs.runs.submit(request, self.state.settings.max_queue, send)
        else:
            await self._call(spec, kwargs, run_id, shape, send, webhook=request)

    async def _call(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        run_id: str,
        shape: ResultShape,
        send: Send,
        as_stream: bool = False,
        webhook: RunRequest | None = None,
    ) -> None:
        clock = RunClock()
        error: RunError | None = None
        try:
            result = await run_with_deadline(
                self._admit_and_invoke(spec, kwargs, run_id, clock), self.state.grace_seconds
            )
            answer = apply_shape(shape, result, spec.name, run_id, int(self.clock()))
            status, body = result_status(answer), encode_json(answer)
        except RequestError:
            raise  # rejected before it ran (429): answered by __call__
        except DeadlineExceeded:
            message = (
                f"{spec.name}() did not finish within response_grace_period "
                f"({self.state.grace_seconds:g} s); run {run_id} was abandoned."
            )
            error = RunError("Timeout", message)
            status, body = 504, encode_error(504, message, "timeout")
        except Exception as exc:
            code, message = _failure(spec, exc, run_id)
            error = RunError(type(exc).__name__, str(exc))
            status, body = 500, encode_error(500, message, code)
        if webhook is not None:  # recorded before we answer, so the webhook cannot be lost
            outcome = finished(clock.elapsed_ms(), body, error)
            await self._jobs().record_finished(webhook, outcome)
        if as_stream and error is None:  # a function that returns, called with stream: one chunk
            frames = encode_event(as_stream_chunk(answer)) + DONE_FRAME
            await _send_sse(send, run_id, frames, more=False)
        else:
            await send_json(send, status, body, run_id)

    async def _admit_and_invoke(
        self, spec: FunctionSpec, kwargs: dict[str, Any], run_id: str, clock: RunClock
    ) -> Any:
        gate = self.state.gate
        await gate.enter()
        clock.start()
        try:
            return await invoke(spec, kwargs, run_id, self.state.threads)
        finally:
            gate.leave()

    async def _stream(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        shape: ResultShape,
        run_id: str,
        receive: Receive,
        send: Send,
    ) -> None:
        gate = self.state.gate
        await gate.enter()
        try:
            framer = StreamFramer(shape.kind, spec.name, run_id, shape.model, int(self.clock()))
            await _send_sse(send, run_id, b"", more=True)
            source = open_stream(spec, kwargs, run_id)
            if await self._pump_until_done_or_gone(spec, source, framer, run_id, receive, send):
                await send({"type": "http.response.body", "body": framer.terminator(), "more_body": False})
        finally:
            gate.leave()

    async def _pump_until_done_or_gone(
        self,
        spec: FunctionSpec,
        source: Iterator[Any] | AsyncIterator[Any],
        framer: StreamFramer,
        run_id: str,
        receive: Receive,
        send: Send,
    ) -> bool:
        """True when the stream ended (normally, by an error or at the time limit): [DONE] is due."""

        async def write(data: bytes) -> None:
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})

        if spec.kind is FunctionKind.GENERATOR:
            assert isinstance(source, Iterator)
            threads = self.state.threads
            pump = stream_sync_generator(source, write, run_id, threads, framer.encode, framer.encode_error)
        else:
            assert isinstance(source, AsyncIterator)
            pump = stream_async_generator(source, write, run_id, framer.encode, framer.encode_error)
        pumping = asyncio.ensure_future(pump)
        watching = asyncio.ensure_future(wait_for_disconnect(receive))
        grace = self.state.grace_seconds
        await asyncio.wait((pumping, watching), timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        if pumping.done():
            watching.cancel()
            await pumping
            return True
        pumping.cancel()  # the generator is closed in the pump's `finally`
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        if watching.done():
            logger.info("Client left run %s; closed %s()", run_id, spec.name)
            return False
        watching.cancel()
        message = f"{spec.name}() streamed past response_grace_period ({grace:g} s); the stream was ended."
        await write(framer.error_frame(message, "timeout"))
        return True


def _json_object(spec: FunctionSpec, raw: bytes) -> dict[str, Any]:
    try:
        value = from_json(raw or b"{}")
    except ValueError as exc:
        raise InvalidJSONError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        got = type(value).__name__
        raise ValidationFailedError(
            f"{spec.name}(): the request body must be a JSON object of parameters, got {got}.",
            [{"parameter": None, "problem": "body must be a JSON object", "got": got}],
        )
    return value


def _wants_stream(request: dict[str, Any]) -> bool:
    value = request.get(STREAM_PARAMETER)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise BadRequestError(f"stream must be true or false, got {value!r}.", _param(STREAM_PARAMETER))


def _encoding_format(request: dict[str, Any]) -> EncodingFormat:
    value = request.get("encoding_format")
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise BadRequestError(
        f'encoding_format must be "float" or "base64", got {value!r}.', _param("encoding_format")
    )


def _no_stream_with_options(options: CallOptions, base_path: str) -> str:
    if options.run_async:
        return (
            '"stream": true cannot be combined with ?async=true: an async run answers 202 at once and '
            'runs later. Submit it with "stream": false, then read its chunks as they come from '
            f"GET {base_path}/runs/<run_id>/events, or poll GET {base_path}/runs/<run_id> for the "
            "whole completion."
        )
    return (
        '"stream": true cannot be combined with webhookEndpoint: the webhook is sent the whole '
        'completion once it is done. Send "stream": false, or leave out webhookEndpoint.'
    )


def _param(name: str) -> list[dict[str, Any]]:
    return [{"parameter": name}]


def _failure(spec: FunctionSpec, exc: Exception, run_id: str) -> tuple[str, str]:
    """(code, message) of a call that ran and failed; logged as the core routes log it."""
    if isinstance(exc, PydanticSerializationError):
        logger.error("run %s: %s() returned a value that is not JSON: %s", run_id, spec.name, exc)
        return "result_not_serializable", (
            f"{spec.name}() returned a value that cannot be written as JSON ({exc}). Return JSON "
            "types, pydantic models or dataclasses."
        )
    if isinstance(exc, IncompatibleResultError | FunctionReportedError):  # its output, not its code
        logger.error("run %s: %s", run_id, exc)
        return (
            "incompatible_result" if isinstance(exc, IncompatibleResultError) else "function_error"
        ), exc.message
    logger.exception("%s() raised in run %s", spec.name, run_id)
    return "function_error", function_error_message(spec.name, exc)


async def _send_request_error(send: Send, exc: RequestError, run_id: str, allow: str) -> None:
    param = next((d["parameter"] for d in exc.details if d.get("parameter")), None)
    extra = [] if exc.retry_after is None else [(b"retry-after", b"%d" % exc.retry_after)]
    if isinstance(exc, MethodNotAllowedError):
        extra.append((b"allow", allow.encode()))
    await send_json(send, exc.status, encode_error(exc.status, exc.message, exc.code, param), run_id, extra)


async def _send_sse(send: Send, run_id: str, body: bytes, more: bool) -> None:
    headers = [*SSE_HEADERS, (b"x-request-id", run_id.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if body or not more:
        await send({"type": "http.response.body", "body": body, "more_body": more})
