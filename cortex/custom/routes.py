"""`/v4/{project}/{app}/<path>` of a custom runtime: forwarded to the app's own server.

Plain calls and WebSockets are relayed as they are. A call with options (`?async=true`,
`webhookEndpoint`) becomes a run like any function's: the proxied path behaves as an async
function of one JSON payload whose result is the app's status and body.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from pydantic import BeforeValidator, TypeAdapter
from pydantic_core import from_json
from starlette.types import Message, Receive, Scope, Send

from cortex.custom.proxy import Upstream, refuse_websocket
from cortex.custom.upstream_client import UpstreamError
from cortex.discovery import FunctionKind, FunctionSpec
from cortex.errors import (
    BadGatewayError,
    ClientDisconnectedError,
    GatewayTimeoutError,
    MethodNotAllowedError,
    NotReadyError,
    RequestError,
    StoreError,
)
from cortex.invocation import parse_arguments
from cortex.logs import current_run_id, log_call
from cortex.metrics import NO_RESPONSE, CallObserver
from cortex.responses import read_request
from cortex.routes import FunctionRoutes, path_after_app, send_rejection
from cortex.run_routes import parse_call_options
from cortex.serialization import encode_json
from cortex.state import ServingState

logger = logging.getLogger("cortex.proxy")

PROXIED_LABEL = "<proxied>"
NOT_READY = "The app's server is starting: its readiness check has not passed yet. Retry shortly."
READY_POLL_SECONDS = 0.1

# Any JSON body, handed to the proxied "function" as its one argument.
_PAYLOAD: TypeAdapter[dict[str, Any]] = TypeAdapter(
    Annotated[dict[str, Any], BeforeValidator(lambda value: {"payload": value})]
)


class AppServerError(Exception):
    """The app's server answered a run with a 5xx: the run failed."""


def proxied_function(path: str, upstream: Upstream, is_ready: Callable[[], bool]) -> FunctionSpec:
    """A run's view of `POST /<path>`: result {"status_code", "body"}; a 5xx fails the run."""

    async def call(payload: Any, run_id: str) -> dict[str, Any]:
        while not is_ready():  # a restarting app delays runs rather than failing them
            await asyncio.sleep(READY_POLL_SECONDS)
        status, content_type, body = await upstream.call_json(f"/{path}", encode_json(payload), run_id)
        decoded = _decode(content_type, body)
        if status >= 500:
            text = body[:1000].decode("utf-8", "replace")
            raise AppServerError(f"The app answered {status} to POST /{path}: {text}")
        return {"status_code": status, "body": decoded}

    return FunctionSpec(
        name=path,
        func=call,
        kind=FunctionKind.ASYNC,
        parameters=(),
        takes_run_id=True,
        takes_extra_kwargs=False,
        positional_only=(),
        arguments=_PAYLOAD,
        return_annotation=Any,
        doc=f"POST /{path} on the app's own server",
    )


CORTEX_QUERY = frozenset({"async", "webhookEndpoint"})


def _app_query(query_string: bytes) -> str:
    """The query without cortex's own parameters, for the run's POST to the app ('' if none)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    kept = [(name, value) for name, value in pairs if name not in CORTEX_QUERY]
    return f"?{urlencode(kept)}" if kept else ""


def _decode(content_type: str, body: bytes) -> Any:
    if "json" in content_type:
        try:
            return from_json(body)
        except ValueError:
            pass
    return body.decode("utf-8", "replace")


class ProxyRoutes:
    """ASGI app for every path under /v4/ of a custom runtime (HTTP and WebSocket)."""

    def __init__(self, state: ServingState, functions: FunctionRoutes, upstream: Upstream) -> None:
        self.state = state
        self.functions = functions  # runs, and calls with options, work as for functions
        self.upstream = upstream

    def is_ready(self) -> bool:
        return self.state.is_ready

    def function(self, path: str) -> FunctionSpec:
        return proxied_function(path, self.upstream, self.is_ready)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = str(uuid.uuid4())
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, run_id)
            return
        observed = self.state.metrics.observer(send)
        # One label for every forwarded path: paths come from clients, labels must stay few.
        observed.function = PROXIED_LABEL
        current_run_id.set(run_id)
        try:
            await self._handle(scope, receive, observed, run_id)
        finally:
            observed.finish()
            if observed.kind != "runs":
                status = observed.status or NO_RESPONSE
                log_call(PROXIED_LABEL, status, (perf_counter() - observed.started) * 1000, run_id)

    async def _handle(self, scope: Scope, receive: Receive, send: CallObserver, run_id: str) -> None:
        try:
            rest = path_after_app(self.state, scope["path"])
            if rest and rest[0] == "runs" and (len(rest) > 1 or scope["method"] != "POST"):
                send.kind = "runs"
                await self.functions.jobs().runs.handle(scope, receive, send, rest[1:])
                return
            self._require_ready()
            options = parse_call_options(scope)
            if not (options.run_async or options.webhook_url is not None):  # the app's own query
                send.kind = "proxy"
                await self._forward(scope, receive, send, run_id)
                return
            send.kind = "async" if options.run_async else "call"
            if scope["method"] != "POST":
                raise MethodNotAllowedError(
                    f"?async=true and webhookEndpoint send the JSON body with POST; got {scope['method']}."
                )
            body, _ = await read_request(scope, receive, self.state.settings.max_body_bytes)
            spec = self.function("/".join(rest) + _app_query(scope["query_string"]))
            kwargs = parse_arguments(spec, body)
            await self.functions.call_with_options(spec, kwargs, body, run_id, options, send)
        except (RequestError, StoreError) as exc:
            await send_rejection(send, exc, run_id)
        except ClientDisconnectedError:
            return

    def _require_ready(self) -> None:
        if not self.state.is_ready:
            raise NotReadyError(NOT_READY)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        gate = self.state.gate
        await gate.enter()  # replica_concurrency counts proxied calls too (429 past the queue)
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.upstream.forward(scope, receive, send_tracked, run_id)
        except (UpstreamError, TimeoutError) as exc:
            if started:  # mid-response: all we can do is end the connection
                logger.warning("run %s: the app's server failed mid-response: %s", run_id, exc or type(exc))
                return
            raise gateway_error(exc, self.upstream.port, self.state.grace_seconds) from None
        finally:
            gate.leave()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        try:
            path_after_app(self.state, scope["path"])
            self._require_ready()
        except RequestError as exc:
            await refuse_websocket(scope, send, exc.status, exc.message)
            return
        gate = self.state.gate
        try:
            await gate.enter()
        except RequestError as exc:
            await refuse_websocket(scope, send, exc.status, exc.message)
            return
        try:
            await self.upstream.websocket(scope, receive, send, run_id)
        finally:
            gate.leave()


def gateway_error(exc: BaseException, port: int, grace: float) -> RequestError:
    if isinstance(exc, TimeoutError):
        return GatewayTimeoutError(
            f"The app's server (127.0.0.1:{port}) did not answer within response_grace_period ({grace:g} s)."
        )
    return BadGatewayError(
        f"The app's server (127.0.0.1:{port}) did not answer: {exc}. It may be restarting; retry shortly."
    )
