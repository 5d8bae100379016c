"""The OpenAPI description of async runs: call options and the /runs endpoints (static)."""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string"}
_TIME = {"type": ["string", "null"], "format": "date-time"}

# Every function accepts these besides its JSON arguments.
CALL_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "async",
        "in": "query",
        "schema": {"type": "boolean", "default": False},
        "description": "Answer 202 at once and run in the background (poll /runs/{run_id}).",
    },
    {
        "name": "webhookEndpoint",
        "in": "query",
        "schema": {"type": "string", "format": "uri"},
        "description": "POST the result here when the run ends (public addresses only).",
    },
    {
        "name": "x-bf-async-job-result-ttl",
        "in": "header",
        "schema": {"type": "integer", "minimum": 1},
        "description": (
            "Seconds the result is kept after the run ends (default 3600). Also x-cortex-result-ttl."
        ),
    },
    {
        "name": "Idempotency-Key",
        "in": "header",
        "schema": _STRING,
        "description": "Submitting the same key and body again returns the same run.",
    },
    {
        "name": "X-Webhook-Secret",
        "in": "header",
        "schema": _STRING,
        "description": "Also sign the webhook Cerebrium's way (X-Cerebrium-Webhook-Signature).",
    },
]

RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["run_id", "function", "status", "created_at", "started_at"],
    "properties": {
        "run_id": _STRING,
        "function": _STRING,
        "status": {"enum": ["pending", "processing", "completed", "failed", "cancelled"]},
        "created_at": _TIME,
        "started_at": _TIME,
        "completed_at": _TIME,
        "expires_at": _TIME,
        "run_time_ms": {"type": ["number", "null"]},
        "result": {},
        "error": {"type": "object", "properties": {"type": _STRING, "message": _STRING}},
        "webhook": {
            "type": "object",
            "properties": {
                "status": {"enum": ["pending", "delivered", "failed"]},
                "attempts": {"type": "integer"},
            },
        },
    },
}


def run_paths(base_path: str, run_ref: str, error_ref: str) -> dict[str, Any]:
    run = {"$ref": run_ref}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": _STRING}

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    error = {"$ref": error_ref}
    return {
        f"{base_path}/runs": {
            "get": {
                "operationId": "list_runs",
                "summary": "List runs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": RUN_SCHEMA["properties"]["status"]},
                    {"name": "function", "in": "query", "schema": _STRING},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "cursor", "in": "query", "schema": _STRING},
                ],
                "responses": {
                    "200": answer(
                        "A page of runs",
                        {
                            "type": "object",
                            "properties": {
                                "runs": {"type": "array", "items": run},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                    ),
                    "400": answer("A bad filter, limit or cursor", error),
                },
            }
        },
        f"{base_path}/runs/{{run_id}}": {
            "get": {
                "operationId": "get_run",
                "summary": "Poll a run",
                "parameters": [run_id],
                "responses": {
                    "200": answer("The run has ended", run),
                    "202": answer("The run is pending or processing", run),
                    "404": answer("Unknown (not_found) or past its TTL (expired)", error),
                },
            },
            "delete": {
                "operationId": "cancel_run",
                "summary": "Cancel a run",
                "parameters": [run_id],
                "responses": {
                    "200": answer("Cancelled", run),
                    "404": answer("Unknown or expired", error),
                    "409": answer("The run had already ended", error),
                },
            },
        },
        f"{base_path}/runs/{{run_id}}/events": {
            "get": {
                "operationId": "run_events",
                "summary": "Replay a generator run's chunks as Server-Sent Events",
                "parameters": [run_id, {"name": "Last-Event-ID", "in": "header", "schema": _STRING}],
                "responses": {
                    "200": {
                        "description": "The events, then live ones",
                        "content": {"text/event-stream": {"schema": _STRING}},
                    },
                    "404": answer("Unknown, expired, or not a generator run", error),
                },
            }
        },
    }
