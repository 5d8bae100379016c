"""The ceiling for bench/peers.py: bench/raw_starlette.py's routes plus an in-memory task queue.

Everything of raw_starlette.py (the same `main.py` functions at the same paths), and the async
scenario's counterpart to cortex's `?async=true`: POST .../task/submit puts the call on an
`asyncio.Queue` and answers 202 {"run_id", "status": "pending"}; one consumer task runs it in
Starlette's threadpool and keeps the result in a dict; GET .../runs/{run_id} answers 202 while it
is pending and 200 {"run_id", "status": "completed", "result"} once done. This is NOT a durable
run: nothing is written to disk, a restart loses every run, and there are no leases, retries,
TTLs or webhooks. It is the cost floor of "accept now, answer later" over HTTP, not an equal.

    .venv/bin/python bench/peers/starlette_app.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for raw_starlette
import raw_starlette

PREFIX = raw_starlette.PREFIX


class TaskQueue:
    """Runs submitted calls one at a time, in order, keeping each result in memory."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.results: dict[str, Any] = {}
        self.pending: set[str] = set()

    async def consume(self) -> None:
        while True:
            run_id, body = await self.queue.get()
            self.results[run_id] = await run_in_threadpool(self.fn, **body)
            self.pending.discard(run_id)

    async def submit(self, request: Request) -> Response:
        body = await request.json()
        run_id = str(uuid.uuid4())
        self.pending.add(run_id)
        self.queue.put_nowait((run_id, body))
        return JSONResponse({"run_id": run_id, "status": "pending"}, status_code=202)

    async def poll(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if run_id in self.pending:
            return JSONResponse({"run_id": run_id, "status": "pending"}, status_code=202)
        if run_id not in self.results:
            return JSONResponse({"detail": f"no run {run_id}"}, status_code=404)
        return JSONResponse({"run_id": run_id, "status": "completed", "result": self.results[run_id]})


def build_app() -> Starlette:
    base = raw_starlette.build_app()
    tasks = TaskQueue(raw_starlette.load_user_module().predict)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        consumer = asyncio.create_task(tasks.consume())
        yield
        consumer.cancel()

    routes = [
        *base.routes,
        Route(f"{PREFIX}/task/submit", tasks.submit, methods=["POST"]),
        Route(f"{PREFIX}/runs/{{run_id}}", tasks.poll, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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
