"""The harder ceiling for bench/run.py: a hand-written ASGI callable, no framework at all.

Same paths (/v4/p-local/bench/<function>), same user functions (bench/apps/trivial/main.py) and
the same replies as bench/raw_starlette.py, with the cheapest stdlib hand-offs instead of
Starlette's: a sync function runs through `loop.run_in_executor` on a module-level
ThreadPoolExecutor (one submit, one future callback); a sync generator is iterated from start to
end by ONE worker thread that passes every framed chunk to the loop with `call_soon_threadsafe`
into an asyncio.Queue (no backpressure: the bench client reads as fast as it can); `async def`
functions and async generators are awaited directly. One ASGI send per chunk, as Starlette does.

    python bench/raw_asgi.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter
from types import ModuleType
from typing import Any

import uvicorn

APP_FILE = Path(__file__).resolve().parent / "apps" / "trivial" / "main.py"
PREFIX = "/v4/p-local/bench"
EXECUTOR = ThreadPoolExecutor(thread_name_prefix="asgi-worker")  # stdlib default size

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Any, Send], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")
TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")
SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")  # what StreamingResponse sends


def load_user_module(path: Path = APP_FILE) -> ModuleType:
    """Import the bench app's main.py by path, as a user module."""
    spec = importlib.util.spec_from_file_location("bench_trivial_main", path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def read_body(receive: Receive) -> bytes:
    """The whole request body: every `http.request` message until more_body is False."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected before sending the whole body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_body(send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes]) -> None:
    headers = [(b"content-length", b"%d" % len(body)), content_type]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def envelope(result: Any, started: float) -> bytes:
    """`{"run_id", "run_time_ms", "result"}` encoded exactly like Starlette's JSONResponse."""
    run_time_ms = (perf_counter() - started) * 1000
    payload = {"run_id": str(uuid.uuid4()), "run_time_ms": run_time_ms, "result": result}
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def frame(chunk: Any) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


def sync_call(fn: Callable[..., Any]) -> Handler:
    async def handler(body: Any, send: Send) -> None:
        started = perf_counter()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(EXECUTOR, functools.partial(fn, **body))
        await send_body(send, 200, envelope(result, started), JSON_TYPE)

    return handler


def async_call(fn: Callable[..., Awaitable[Any]]) -> Handler:
    async def handler(body: Any, send: Send) -> None:
        started = perf_counter()
        result = await fn(**body)
        await send_body(send, 200, envelope(result, started), JSON_TYPE)

    return handler


async def start_stream(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [SSE_TYPE]})


async def send_frame(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def end_stream(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def sync_stream(fn: Callable[..., Iterator[Any]]) -> Handler:
    async def handler(body: Any, send: Send) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        stopped = threading.Event()

        def produce() -> None:
            """Worker thread: the whole generator; None on the queue marks the end (or a failure)."""
            try:
                for chunk in fn(**body):
                    if stopped.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, frame(chunk))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        await start_stream(send)
        producer = loop.run_in_executor(EXECUTOR, produce)
        try:
            while (data := await queue.get()) is not None:
                await send_frame(send, data)
            await producer  # re-raises what the generator raised
        finally:
            stopped.set()  # we are done or gone: the thread stops at its next chunk
        await end_stream(send)

    return handler


def async_stream(fn: Callable[..., AsyncIterator[Any]]) -> Handler:
    async def handler(body: Any, send: Send) -> None:
        await start_stream(send)
        async for chunk in fn(**body):
            await send_frame(send, frame(chunk))
        await end_stream(send)

    return handler


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app() -> App:
    user = load_user_module()
    routes: dict[str, Handler] = {
        f"{PREFIX}/predict": sync_call(user.predict),
        f"{PREFIX}/apredict": async_call(user.apredict),
        f"{PREFIX}/stream": sync_stream(user.stream),
        f"{PREFIX}/astream": async_stream(user.astream),
    }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        path = scope["path"]
        if path == "/health":
            return await send_body(send, 200, b"ok", TEXT_TYPE)
        handler = routes.get(path)
        if handler is None:
            return await send_body(send, 404, b"Not Found", TEXT_TYPE)
        if scope["method"] != "POST":
            return await send_body(send, 405, b"Method Not Allowed", TEXT_TYPE)
        await handler(json.loads(await read_body(receive)), send)

    return app


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
