"""The everyday tools beside the API: /metrics (Prometheus), /docs (Swagger UI, offline) and /
(a dashboard polling /dashboard.json). Routes only; the figures live in metrics.py."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cortex.metrics import CONTENT_TYPE
from cortex.state import ServingState

DOCS_ASSETS = "/docs/assets/"
# The Swagger UI files the page loads, from the swagger-ui-bundle package (no CDN).
_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
RECENT_RUNS = 10

_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>API docs</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
  persistAuthorization: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
</script>
</body>
</html>
"""


def _swagger_dir() -> Path:
    import swagger_ui_bundle  # type: ignore[import-untyped]  # ships no types; one attribute used

    return Path(swagger_ui_bundle.swagger_ui_path)


def page_routes(state: ServingState) -> list[Route]:
    assets = _swagger_dir()
    dashboard_html = files("cortex").joinpath("dashboard.html").read_text(encoding="utf-8")

    async def metrics(request: Request) -> Response:
        if state.jobs is not None:
            state.metrics.set_runs(await state.jobs.store.count_runs())
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)

    async def docs(request: Request) -> Response:
        return HTMLResponse(_DOCS_HTML)

    async def docs_asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = _ASSET_TYPES.get(name)
        if media_type is None:
            raise HTTPException(404)
        headers = {"cache-control": "public, max-age=86400"}
        return FileResponse(assets / name, media_type=media_type, headers=headers)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(dashboard_html)

    async def dashboard_json(request: Request) -> Response:
        return JSONResponse(await _dashboard_data(state))

    return [
        Route("/metrics", metrics),
        Route("/docs", docs),
        Route(DOCS_ASSETS + "{name}", docs_asset),
        Route("/", dashboard),
        Route("/dashboard.json", dashboard_json),
    ]


async def _dashboard_data(state: ServingState) -> dict[str, Any]:
    registry = state.registry
    functions = [] if registry is None else list(registry.functions.values())
    runs: list[dict[str, Any]] = []
    if state.jobs is not None:
        recent, _ = await state.jobs.store.list_runs(None, None, RECENT_RUNS, None)
        runs = [
            {
                "run_id": run.run_id,
                "function": run.function,
                "status": run.status.value,
                "created_at": run.request.created_at,
                "run_time_ms": run.run_time_ms,
            }
            for run in recent
        ]
    return {
        "app": state.app_name,
        "base_path": state.base_path,
        "ready": state.is_ready,
        "in_flight": state.gate.active,
        "queued": state.gate.waiting,
        "limit": state.gate.limit,
        "functions": [
            {"name": spec.name, "kind": spec.kind.value, **state.metrics.function_summary(spec.name)}
            for spec in functions
        ],
        "runs": runs,
    }
