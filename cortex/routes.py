"""`/v4/{project}/{app}/{function}`: a lean ASGI handler, because this path is the product.

Starlette's Request/Response objects cost more than the rest of a call; here a call reads the
body, validates it once with the validator built at discovery, and writes one response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from time import perf_counter
from typing import Any

from starlette.types import Receive, Scope, Send

from cortex.concurrency import DeadlineExceeded, RunClock, run_with_deadline
from cortex.discovery import FunctionKind, FunctionSpec
from cortex.errors import (
    ClientDisconnectedError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    RequestError,
    ResultNotSerializableError,
    StoreError,
    StoreUnavailableError,
)
from cortex.invocation import invoke, open_stream, parse_arguments
from cortex.jobs.models import RunError, RunRequest, finished
from cortex.logs import current_run_id, log_call, request_logger
from cortex.metrics import NO_RESPONSE, CallObserver
from cortex.openai_compat.routes import OpenAIRoutes, match_openai_path
from cortex.responses import (
    SSE_HEADERS,
    encode_failure,
    encode_request_error,
    encode_result,
    read_request,
    send_json,
    wait_for_disconnect,
)
from cortex.run_routes import NO_OPTIONS, CallOptions, parse_call_options
from cortex.serialization import encode_json
from cortex.state import NOT_READY_MESSAGE, JobsRuntime, ServingState
from cortex.streaming import encode_error_event, stream_async_generator, stream_sync_generator

logger = logging.getLogger("cortex.calls")


async def send_rejection(send: Send, exc: RequestError | StoreError, run_id: str) -> None:
    """A call refused before it ran (or a store failure), as its JSON error with its headers."""
    if isinstance(exc, StoreError):  # the disk is full or the file unreadable: say so, as JSON
        logger.error("run %s: %s", run_id, exc)
        exc = StoreUnavailableError(exc.message)
    extra = [] if exc.retry_after is None else [(b"retry-after", b"%d" % exc.retry_after)]
    if isinstance(exc, MethodNotAllowedError):
        extra.append((b"allow", exc.allow.encode()))
    await send_json(send, exc.status, encode_request_error(exc), run_id, extra)


def path_after_app(state: ServingState, path: str) -> list[str]:
    """The path segments after /v4/{project}/{app}/, once both are this server's."""
    parts = path.split("/")  # ['', 'v4', project, app, ...]
    where = f"{state.base_path}/{'<path>' if state.is_custom_runtime else '<function>'}"
    if len(parts) < 4 or parts[2] != state.project_id:
        project = parts[2] if len(parts) > 2 else ""
        raise NotFoundError(
            f"Unknown project '{project}': this server serves project '{state.project_id}' at {where}."
        )
    if parts[3] != state.app_name:
        raise NotFoundError(
            f"Unknown app '{parts[3]}': this server serves app '{state.app_name}' at {where}."
        )
    return parts[4:]


class FunctionRoutes:
    """ASGI app for every path under /v4/."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.openai = OpenAIRoutes(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observed = self.state.metrics.observer(send)  # counts the call once it is answered
        run_id = str(uuid.uuid4())
        current_run_id.set(run_id)  # this request's task only: the user's output carries it
        try:
            await self._handle(scope, receive, observed, run_id)
        finally:
            observed.finish()
            if observed.function:  # a call of a function, not a poll or a refused path
                status = observed.status or NO_RESPONSE
                log_call(observed.function, status, (perf_counter() - observed.started) * 1000, run_id)

    async def _handle(self, scope: Scope, receive: Receive, send: CallObserver, run_id: str) -> None:
        try:
            rest = path_after_app(self.state, scope["path"])
            if rest and rest[0] == "runs" and (len(rest) > 1 or scope["method"] != "POST"):
                send.kind = "runs"
                await self.jobs().runs.handle(scope, receive, send, rest[1:])
                return
            openai_path = match_openai_path(rest)  # {fn}/chat/completions, /embeddings, /models, ...
            if openai_path is not None:
                send.kind = "openai"
                await self.openai.handle(scope, receive, send, openai_path, run_id)
                return
            spec = self._function(rest, scope["method"])
            send.function = spec.name
            body, wants_sse = await read_request(scope, receive, self.state.settings.max_body_bytes)
            request_logger.debug("%s(): %d bytes in", spec.name, len(body))
            kwargs = parse_arguments(spec, body)
            options = parse_call_options(scope)
            if options is not NO_OPTIONS:
                send.kind = "async" if options.run_async else "call"
                await self.call_with_options(spec, kwargs, body, run_id, options, send)
            elif wants_sse and spec.kind.is_streaming:
                send.kind = "stream"
                await self._stream(spec, kwargs, run_id, receive, send)
            else:
                await self._call(spec, kwargs, run_id, send)
        except (RequestError, StoreError) as exc:
            await send_rejection(send, exc, run_id)
        except ClientDisconnectedError:
            return

    def _function(self, rest: list[str], method: str) -> FunctionSpec:
        registry = self.state.registry
        if registry is None:
            raise NotReadyError(NOT_READY_MESSAGE)
        name = rest[0] if len(rest) == 1 else "/".join(rest).rstrip("/")
        spec = registry.functions.get(name)
        if spec is None:
            public = ", ".join(registry.functions) or "none"
            raise NotFoundError(f"No function '{name}' in main.py. Public functions: {public}.")
        if method != "POST":
            raise MethodNotAllowedError(f"Use POST to call {name}(); got {method}.")
        return spec

    def jobs(self) -> JobsRuntime:
        if self.state.jobs is None:
            raise NotReadyError(NOT_READY_MESSAGE)
        return self.state.jobs

    async def call_with_options(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        body: bytes,
        run_id: str,
        options: CallOptions,
        send: Send,
    ) -> None:
        """`?async=true` and/or `webhookEndpoint`: the run is recorded in the job store."""
        jobs = self.jobs()
        request = await jobs.new_run(spec, body, run_id, options)
        if options.run_async:
            await jobs.runs.submit(request, self.state.settings.max_queue, send)
        else:
            await self._call(spec, kwargs, run_id, send, webhook=request)

    async def _call(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        run_id: str,
        send: Send,
        webhook: RunRequest | None = None,
    ) -> None:
        state = self.state
        clock = RunClock()
        try:
            result = await run_with_deadline(
                self._admit_and_invoke(spec, kwargs, run_id, clock), state.grace_seconds
            )
            status, body = encode_result(run_id, clock.elapsed_ms(), result, spec.name)
            error = None
        except RequestError:
            raise  # rejected before it ran (429): answered by __call__
        except DeadlineExceeded:
            message = (
                f"{spec.name}() did not finish within response_grace_period "
                f"({state.grace_seconds:g} s); run {run_id} was abandoned."
            )
            error = RunError("Timeout", message)
            status, body = 504, encode_failure(run_id, clock.elapsed_ms(), error.type, message)
        except Exception as exc:
            if isinstance(exc, ResultNotSerializableError):
                logger.error("run %s: %s", run_id, exc)
            else:
                logger.exception("%s() raised in run %s", spec.name, run_id)
            error = RunError(type(exc).__name__, str(exc))
            status, body = 500, encode_failure(run_id, clock.elapsed_ms(), error.type, error.message)
        if webhook is not None:  # recorded before we answer, so the webhook cannot be lost
            outcome = finished(clock.elapsed_ms(), encode_json(result) if error is None else None, error)
            await self.jobs().record_finished(webhook, outcome)
        await send_json(send, status, body, run_id)

    async def _admit_and_invoke(
        self, spec: FunctionSpec, kwargs: dict[str, Any], run_id: str, clock: RunClock
    ) -> Any:
        gate = self.state.gate
        await gate.enter()
        clock.start()  # run_time_ms is the function's time, not time spent waiting in line
        try:
            return await invoke(spec, kwargs, run_id, self.state.threads)
        finally:
            gate.leave()

    async def _stream(
        self, spec: FunctionSpec, kwargs: dict[str, Any], run_id: str, receive: Receive, send: Send
    ) -> None:
        gate = self.state.gate
        await gate.enter()
        try:
            headers = [*SSE_HEADERS, (b"x-request-id", run_id.encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await self._pump_until_done_or_gone(
                spec, open_stream(spec, kwargs, run_id), run_id, receive, send
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gate.leave()

    async def _pump_until_done_or_gone(
        self,
        spec: FunctionSpec,
        source: Iterator[Any] | AsyncIterator[Any],
        run_id: str,
        receive: Receive,
        send: Send,
    ) -> None:
        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        encode = self.state.metrics.counting_encoder(spec.name)  # counts stream chunks sent
        if spec.kind is FunctionKind.GENERATOR:
            assert isinstance(source, Iterator)
            pump = stream_sync_generator(source, write, run_id, self.state.threads, encode)
        else:
            assert isinstance(source, AsyncIterator)
            pump = stream_async_generator(source, write, run_id, encode)
        pumping = asyncio.ensure_future(pump)
        watching = asyncio.ensure_future(wait_for_disconnect(receive))
        grace = self.state.grace_seconds
        await asyncio.wait((pumping, watching), timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        if pumping.done():
            watching.cancel()
            await pumping
            return
        pumping.cancel()  # the generator is closed in the pump's `finally`
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        if watching.done():
            logger.info("Client left run %s; closed %s()", run_id, spec.name)
            return
        watching.cancel()
        message = f"{spec.name}() streamed past response_grace_period ({grace:g} s); the stream was ended."
        await write(encode_error_event(TimeoutError(message), run_id, error_type="Timeout"))
