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
    try:
        body = await request.json()
    except ValueError:  # your server answers bad input itself: cortex passes the answer on
        return JSONResponse({"error": 'send a JSON object, e.g. {"name": "Ada"}'}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": 'send a JSON object, e.g. {"name": "Ada"}'}, status_code=400)
    return JSONResponse({"message": f"{GREETING}, {body.get('name', 'world')}"})


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/ready", ready),
        Route("/predict", predict, methods=["POST"]),
    ]
)
