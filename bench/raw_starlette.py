"""The baseline for bench/run.py: plain Starlette routes doing the same work as `cortex serve`.

Routes sit at the paths Cortex uses (/v4/p-local/bench/<function>) and call the very functions
of bench/apps/trivial/main.py, like for like: a sync function runs in Starlette's threadpool, an
`async def` one is awaited; a sync generator is iterated by StreamingResponse in the threadpool,
an async generator directly.

    python bench/raw_starlette.py --port 8000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from time import perf_counter
from types import ModuleType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

APP_FILE = Path(__file__).resolve().parent / "apps" / "trivial" / "main.py"
PREFIX = "/v4/p-local/bench"

Endpoint = Callable[[Request], Awaitable[Response]]


def load_user_module(path: Path = APP_FILE) -> ModuleType:
    """Import the bench app's main.py by path, as a user module."""
    spec = importlib.util.spec_from_file_location("bench_trivial_main", path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reply(result: Any, started: float) -> JSONResponse:
    run_time_ms = (perf_counter() - started) * 1000
    return JSONResponse({"run_id": str(uuid.uuid4()), "run_time_ms": run_time_ms, "result": result})


def sync_call(fn: Callable[..., Any]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        body = await request.json()
        started = perf_counter()
        result = await run_in_threadpool(fn, **body)
        return _reply(result, started)

    return endpoint


def async_call(fn: Callable[..., Awaitable[Any]]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        body = await request.json()
        started = perf_counter()
        result = await fn(**body)
        return _reply(result, started)

    return endpoint


def sync_stream(fn: Callable[..., Iterator[Any]]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        body = await request.json()

        def frames() -> Iterator[str]:
            for chunk in fn(**body):
                yield f"data: {json.dumps(chunk)}\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    return endpoint


def async_stream(fn: Callable[..., AsyncIterator[Any]]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        body = await request.json()

        async def frames() -> AsyncIterator[str]:
            async for chunk in fn(**body):
                yield f"data: {json.dumps(chunk)}\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    return endpoint


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


def build_app() -> Starlette:
    user = load_user_module()
    routes = [
        Route("/health", health),
        Route(f"{PREFIX}/predict", sync_call(user.predict), methods=["POST"]),
        Route(f"{PREFIX}/apredict", async_call(user.apredict), methods=["POST"]),
        Route(f"{PREFIX}/stream", sync_stream(user.stream), methods=["POST"]),
        Route(f"{PREFIX}/astream", async_stream(user.astream), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
