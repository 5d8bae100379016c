"""build_app(state) -> the ASGI app: function routes, health, readiness, OpenAPI, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import FrameType
from typing import Any

from pydantic_core import to_json
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex.auth import Denial
from cortex.custom.proxy import refuse_websocket
from cortex.custom.routes import NOT_READY
from cortex.custom.runtime import build_custom_runtime
from cortex.discovery import FunctionSpec, Registry, discover
from cortex.errors import CortexError
from cortex.http_protocol import DIRECT_LANE
from cortex.jobs.ssrf import parse_allow_cidrs
from cortex.jobs.store import store_from_url
from cortex.jobs.webhooks import (
    DEFAULT_RETRY_SCHEDULE,
    WebhookDispatcher,
    load_or_create_secret,
    parse_retry_schedule,
)
from cortex.jobs.worker import RunWorker, WorkerTimings
from cortex.openapi import build_openapi, build_proxy_openapi
from cortex.pages import page_routes
from cortex.responses import encode_error, send_json
from cortex.routes import FunctionRoutes
from cortex.run_routes import RunRoutes
from cortex.state import NOT_READY_MESSAGE, JobsRuntime, ServingState

logger = logging.getLogger("cortex")

STATE_DIR = ".cortex"  # beside main.py: the default run store and the webhook secret

OnLoaded = Callable[[Registry | None], None]  # None: a custom runtime's server is ready
OnLoadFailed = Callable[[CortexError], None]


class CortexApp:
    """Calls under /v4/ go straight to the calls app (FunctionRoutes, or ProxyRoutes for a custom
    runtime); everything else through Starlette."""

    def __init__(self, state: ServingState, calls: ASGIApp, starlette: Starlette) -> None:
        self.state = state
        self.calls = calls
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.starlette(scope, receive, _startup_failures_told_plainly(send))
            return
        authenticator = self.state.authenticator
        if authenticator is not None and not authenticator.is_open(scope["path"]):
            decision = authenticator.check(_header(scope, b"authorization"))
            if isinstance(decision, Denial):
                await _refuse(decision, scope, send)
                return
        if kind == "websocket" and not (self.state.is_custom_runtime and scope["path"].startswith("/v4/")):
            message = "No WebSocket routes here: only a custom runtime's paths under /v4/ take WebSockets."
            await refuse_websocket(scope, send, 404, message)
        elif scope["path"].startswith("/v4/"):
            await self.calls(scope, receive, send)
        else:
            await self.starlette(scope, receive, _with_request_id(send))


def _startup_failures_told_plainly(send: Send) -> Send:
    """A CortexError at startup (the job store cannot open, say) is the user's to fix: uvicorn
    logs its message, not the traceback Starlette puts in `lifespan.startup.failed`."""

    async def send_plainly(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed":
            failure = sys.exc_info()[1]  # Starlette sends this from its `except` block
            if isinstance(failure, CortexError):
                message = {**message, "message": failure.message}
        await send(message)

    return send_plainly


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _refuse(denial: Denial, scope: Scope, send: Send) -> None:
    """401/403 before anything else runs: not even which functions exist is told."""
    if scope["type"] == "websocket":
        await refuse_websocket(scope, send, denial.status, denial.message)
        return
    body = encode_error(denial.code, denial.message)
    header = (b"www-authenticate", denial.www_authenticate.encode("ascii"))
    await send_json(send, denial.status, body, str(uuid.uuid4()), [header])


def _with_request_id(send: Send) -> Send:
    """Every response carries X-Request-Id, not only function calls: logs can always be joined."""
    request_id = str(uuid.uuid4()).encode()

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
        await send(message)

    return send_with_id


def build_app(
    state: ServingState,
    on_loaded: OnLoaded | None = None,
    on_load_failed: OnLoadFailed | None = None,
) -> CortexApp:
    """The app; its lifespan imports main.py in a thread so /health answers during a slow load."""
    openapi: dict[str, tuple[int, bytes]] = {}  # "document": (status, body) once loaded

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if not state.is_ready:
            message = NOT_READY if state.is_custom_runtime else NOT_READY_MESSAGE
            body = {"status": "loading", "message": message}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        functions = [] if state.registry is None else list(state.registry.functions)
        return JSONResponse({"status": "ready", "functions": functions})

    async def openapi_json(request: Request) -> Response:
        if "document" not in openapi:
            return JSONResponse(
                {"error": {"code": "not_ready", "message": NOT_READY_MESSAGE}}, status_code=503
            )
        status, body = openapi["document"]
        return Response(body, status_code=status, media_type="application/json")

    def loaded(registry: Registry | None, document: tuple[int, bytes]) -> None:
        openapi["document"] = document
        state.registry = registry
        if on_loaded is not None:
            on_loaded(registry)

    functions = FunctionRoutes(state)
    custom = build_custom_runtime(state, functions) if state.is_custom_runtime else None

    def start() -> Coroutine[Any, Any, None]:
        if custom is None:
            return _load(state, loaded, on_load_failed)
        return custom.start(lambda: loaded(None, _proxy_document(state)), on_load_failed or _log_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        starting = asyncio.ensure_future(start())
        lookup = None if custom is None else custom.routes.function
        try:
            async with _job_engine(state, lookup):
                # Lifespan state reaches every connection (uvicorn's app_state): the proxy's lane.
                yield {} if custom is None else {DIRECT_LANE: custom.lane}
        finally:
            starting.cancel()
            if custom is not None:  # after the runs drained: they may be calling the app
                await custom.stop()
            state.threads.shutdown()

    starlette = Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/openapi.json", openapi_json),
            *page_routes(state),  # /metrics, /docs, / (the dashboard)
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    return CortexApp(state, functions if custom is None else custom.routes, starlette)


@contextlib.asynccontextmanager
async def _job_engine(
    state: ServingState, proxied: Callable[[str], FunctionSpec] | None = None
) -> AsyncIterator[None]:
    """Open the store; run the worker (once main.py is loaded) and the webhook dispatcher."""
    settings = state.settings
    namespace = f"{state.project_id}/{state.app_name}"
    store = store_from_url(settings.store, state.app_dir / STATE_DIR, namespace, settings.strict_durability)
    allow = tuple(parse_allow_cidrs(settings.webhook_allow_cidrs or ""))
    schedule = (
        parse_retry_schedule(settings.webhook_retry_schedule)
        if settings.webhook_retry_schedule
        else DEFAULT_RETRY_SCHEDULE
    )
    secret, secret_path = load_or_create_secret(settings.webhook_secret, state.app_dir / STATE_DIR)
    if secret_path is not None:
        logger.info("Webhooks are signed with the secret in %s (or set CORTEX_WEBHOOK_SECRET)", secret_path)
    await store.open()
    dispatcher = WebhookDispatcher(store, secret, schedule, allow, on_attempt=state.metrics.webhook_attempt)

    def lookup(name: str) -> FunctionSpec | None:
        if proxied is not None:
            return proxied(name)  # a custom runtime: the run is a POST to that path
        return None if state.registry is None else state.registry.functions.get(name)

    worker = RunWorker(
        store,
        lookup,
        state.gate,
        state.threads,
        state.grace_seconds,
        settings.max_attempts,
        WorkerTimings.for_lease(settings.run_lease_seconds),
        on_finished=dispatcher.wake,
    )
    state.jobs = JobsRuntime(store, worker, RunRoutes(store, worker, state.base_path), allow, dispatcher.wake)
    loops = [
        asyncio.ensure_future(dispatcher.run_forever()),
        asyncio.ensure_future(_start_when_loaded(state, worker)),
    ]
    try:
        with _on_shutdown_signal(worker.stop_claiming):
            yield
    finally:
        for task in loops:
            task.cancel()
        await worker.stop(drain_seconds=state.grace_seconds)
        await dispatcher.aclose()
        await store.close()


@contextlib.contextmanager
def _on_shutdown_signal(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` on the event loop as soon as SIGTERM or SIGINT arrives, then let uvicorn's
    own handler (installed before the lifespan started) go on to drain the connections: without
    this, runs would still be claimed during that drain, only to be cut short by the shutdown."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread (an embedded server: nothing to chain)
        return
    loop = asyncio.get_running_loop()
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}

    def handle(number: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[signal.Signals(number)]
        if callable(chained):
            chained(number, frame)

    for number in previous:
        signal.signal(number, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


async def _start_when_loaded(state: ServingState, worker: RunWorker) -> None:
    """Runs wait in the store until main.py is imported: their functions must exist first."""
    while not state.is_ready:
        await asyncio.sleep(0.05)
    worker.start()


def _log_error(exc: CortexError) -> None:
    logger.error("%s", exc)


def _proxy_document(state: ServingState) -> tuple[int, bytes]:
    is_open = None if state.authenticator is None else state.authenticator.is_open
    return 200, to_json(build_proxy_openapi(state.base_path, state.app_name, is_open))


async def _load(
    state: ServingState,
    loaded: Callable[[Registry, tuple[int, bytes]], None],
    on_load_failed: OnLoadFailed | None,
) -> None:
    try:
        registry = await asyncio.to_thread(discover, state.app_dir)
    except CortexError as exc:
        if on_load_failed is None:
            logger.error("%s", exc)
        else:
            on_load_failed(exc)
        return
    loaded(registry, await asyncio.to_thread(_document, state, registry))


def _document(state: ServingState, registry: Registry) -> tuple[int, bytes]:
    """The OpenAPI document; a failure to describe the app never keeps it from serving."""
    try:
        is_open = None if state.authenticator is None else state.authenticator.is_open
        return 200, to_json(build_openapi(state.base_path, state.app_name, registry, is_open))
    except Exception as exc:
        logger.exception("Could not build the OpenAPI document")
        message = f"The OpenAPI document could not be built: {type(exc).__name__}: {exc}"
        return 500, to_json({"error": {"code": "openapi_failed", "message": message}})


async def _http_error(request: Request, exc: Any) -> Response:
    """Starlette's own 404/405 for paths outside /v4/, as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = f"No route {request.method} {request.url.path}." if exc.status_code == 404 else str(exc.detail)
    return JSONResponse(
        {"error": {"code": codes.get(exc.status_code, "http_error"), "message": message}},
        status_code=exc.status_code,
        headers=exc.headers,
    )
