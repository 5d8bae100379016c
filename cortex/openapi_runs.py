"""The OpenAPI description of async runs (static): call options, the 202 answer, /runs endpoints, SSE."""

from __future__ import annotations

from typing import Any

from cortex.run_routes import DEFAULT_RESULT_TTL, LIST_LIMIT_MAX, MAX_EVENT_ID, MAX_RESULT_TTL

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
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RESULT_TTL},
        "description": (
            f"Seconds the result is kept after the run ends (default {DEFAULT_RESULT_TTL}, at most a "
            "year). Also x-cortex-result-ttl."
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

TAG = "Runs"
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "schema": {"type": "integer", "minimum": -MAX_EVENT_ID, "maximum": MAX_EVENT_ID},
    "description": "Resume after this event's `id:` (what an EventSource sends when it reconnects).",
}
# One Server-Sent Event. Before OpenAPI 3.2 (`itemSchema`), a text/event-stream `schema` is read
# as the schema of each event of the stream.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "title": "Server-Sent Event",
    "properties": {
        "event": _STRING,
        "data": _STRING,
        "id": _STRING,
        "retry": {"type": "integer", "minimum": 0},
    },
}
_STATUS = {"enum": ["pending", "processing", "completed", "failed", "cancelled"]}
ACCEPTED_RESPONSE: dict[str, Any] = {
    "description": (
        "With ?async=true: accepted; poll the Location header. `pending`, unless an Idempotency-Key "
        "names a run submitted before: that run as it is now."
    ),
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["run_id", "status"],
                "properties": {"run_id": _STRING, "status": _STATUS},
            }
        }
    },
}

RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["run_id", "function", "status", "created_at", "started_at"],
    "properties": {
        "run_id": _STRING,
        "function": _STRING,
        "status": _STATUS,
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
                "tags": [TAG],
                "summary": "List runs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": RUN_SCHEMA["properties"]["status"]},
                    {"name": "function", "in": "query", "schema": _STRING},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX},
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
                "tags": [TAG],
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
                "tags": [TAG],
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
                "tags": [TAG],
                "summary": "Replay a generator run's chunks as Server-Sent Events",
                "parameters": [run_id, _LAST_EVENT_ID],
                "responses": {
                    "200": {
                        "description": "The events, then live ones",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}},
                    },
                    "400": answer("Last-Event-ID is not an event number", error),
                    "404": answer("Unknown, expired, or not a generator run", error),
                },
            }
        },
    }
