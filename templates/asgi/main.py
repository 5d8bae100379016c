"""A custom runtime: your own ASGI app (Starlette here; FastAPI works the same), proxied by Cortex.

Cortex starts the entrypoint from cerebrium.toml, waits for /ready, restarts the app when /health
fails, and forwards /v4/{project}/{app}/<path> to <path> on the app's port.
"""

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

# Load models here: until this module is imported, /ready does not answer and no call is sent.
GREETING = os.environ.get("GREETING", "hello")


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def ready(request: Request) -> Response:
    return PlainTextResponse("ready")


async def predict(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"message": f"{GREETING}, {body.get('name', 'world')}"})


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/ready", ready),
        Route("/predict", predict, methods=["POST"]),
    ]
)
