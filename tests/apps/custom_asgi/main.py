"""A user's own Starlette app, as Cerebrium's custom-runtime examples write them.

Behaviour for the tests comes from the environment: READY_AFTER (seconds before /ready is 200).
"""
import asyncio
import json
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

STARTED = time.monotonic()
READY_AFTER = float(os.environ.get("READY_AFTER", "0"))


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def ready(request: Request) -> Response:
    if time.monotonic() - STARTED < READY_AFTER:
        return PlainTextResponse("warming up", status_code=503)
    return PlainTextResponse("ready")


async def predict(request: Request) -> Response:
    body = await request.json()
    busy_until = time.perf_counter() + float(request.query_params.get("cpu_ms", "0")) / 1000
    while time.perf_counter() < busy_until:  # cpu_ms=N: a model's N ms of CPU work per call
        pass
    return JSONResponse(
        {
            "echo": body,
            "request_id": request.headers.get("x-request-id"),
            "forwarded_for": request.headers.get("x-forwarded-for"),
            "forwarded_proto": request.headers.get("x-forwarded-proto"),
            "forwarded_host": request.headers.get("x-forwarded-host"),
            "query": dict(request.query_params),
            "pid": os.getpid(),
            "env": {name: os.environ.get(name) for name in ("PORT", "APP_NAME", "PROJECT_ID")},
        }
    )


async def anything(request: Request) -> Response:
    """Any method: says what it got, so the proxy's method, headers and body can be checked."""
    body = await request.body()
    headers = {name: value for name, value in request.headers.items()}
    return JSONResponse(
        {"method": request.method, "path": request.url.path, "headers": headers, "size": len(body)},
        status_code=int(request.query_params.get("status", "200")),
        headers={"x-app-header": "kept"},
    )


async def stream(request: Request) -> Response:
    count = int(request.query_params.get("n", "5"))
    delay = float(request.query_params.get("delay", "0.2"))

    async def events():
        for i in range(count):
            yield f"data: {json.dumps({'i': i})}\n\n"
            await asyncio.sleep(delay)

    return StreamingResponse(events(), media_type="text/event-stream")


async def download(request: Request) -> Response:
    size = int(request.query_params.get("mb", "8")) * 1024 * 1024
    chunk = b"x" * 65536

    async def body():
        sent = 0
        while sent < size:
            yield chunk
            sent += len(chunk)

    # sized=1: a Content-Length download (a file's), else chunked (a generated stream's)
    headers = {"content-length": str(size)} if request.query_params.get("sized") else None
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


async def upload(request: Request) -> Response:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"received": size})


async def fail(request: Request) -> Response:
    return JSONResponse({"detail": "the app's own error"}, status_code=418)


async def crash(request: Request) -> Response:
    os._exit(3)  # the process dies mid-request, as a segfaulting model server would


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("seconds", "2")))
    return JSONResponse({"slept": True})


async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol=(websocket.scope.get("subprotocols") or [None])[0])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                if message["text"] == "close-4001":
                    await websocket.close(code=4001, reason="asked to")
                    return
                await websocket.send_text("echo:" + message["text"])
            else:
                await websocket.send_bytes(b"echo:" + message["bytes"])
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/ready", ready),
        Route("/predict", predict, methods=["POST"]),
        Route("/anything/{rest:path}", anything, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/stream", stream, methods=["GET", "POST"]),
        Route("/download", download),
        Route("/upload", upload, methods=["POST", "PUT"]),
        Route("/fail", fail, methods=["GET", "POST"]),
        Route("/crash", crash, methods=["GET", "POST"]),
        Route("/slow", slow, methods=["GET", "POST"]),
        WebSocketRoute("/ws", echo_socket),
    ]
)
