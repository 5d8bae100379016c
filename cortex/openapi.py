"""The OpenAPI 3.1 document of an app's function routes, built once from the type hints."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from cortex import __version__
from cortex.discovery import FunctionSpec, Registry

REF_TEMPLATE = "#/components/schemas/{model}"

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
_FAILURE_SCHEMA = {
    "type": "object",
    "required": ["run_id", "run_time_ms", "error"],
    "properties": {
        "run_id": {"type": "string"},
        "run_time_ms": {"type": "number"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_REJECTIONS = {
    "400": "The body is not valid JSON",
    "404": "Unknown project, app or function",
    "405": "Only POST calls a function",
    "413": "The body is larger than CORTEX_MAX_BODY_BYTES",
    "422": "The arguments do not match the function's parameters",
    "429": "replica_concurrency and CORTEX_MAX_QUEUE are both full; see Retry-After",
    "503": "main.py is still being imported",
}


def build_openapi(base_path: str, app_name: str, registry: Registry) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": _ERROR_SCHEMA,
        "RunFailure": _FAILURE_SCHEMA,
    }
    paths = {
        f"{base_path}/{spec.name}": {"post": _operation(spec, schemas)}
        for spec in registry.functions.values()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": app_name,
            "version": __version__,
            "description": f"Served by Cortex {__version__}",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(spec: FunctionSpec, schemas: dict[str, Any]) -> dict[str, Any]:
    result = {"type": "array"} if spec.kind.is_streaming else _result_schema(spec, schemas)
    envelope = {
        "type": "object",
        "required": ["run_id", "run_time_ms", "result"],
        "properties": {
            "run_id": {"type": "string"},
            "run_time_ms": {"type": "number"},
            "result": result,
        },
    }
    ok: dict[str, Any] = {"application/json": {"schema": envelope}}
    if spec.kind.is_streaming:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "The function's result", "content": ok}}
    for status, why in _REJECTIONS.items():
        responses[status] = _json_response(why, "Error")
    responses["500"] = _json_response("The function raised, or its result is not JSON", "RunFailure")
    responses["504"] = _json_response("The call outlived response_grace_period", "RunFailure")
    return {
        "operationId": spec.name,
        "summary": spec.doc.splitlines()[0] if spec.doc else f"Call {spec.name}()",
        "description": _describe(spec),
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _request_schema(spec, schemas)}},
        },
        "responses": responses,
    }


def _describe(spec: FunctionSpec) -> str:
    text = spec.doc
    if spec.kind.is_streaming:
        text += (
            "\n\nA generator: send `Accept: text/event-stream` to receive its chunks as Server-Sent "
            "Events; otherwise the chunks are collected into a list in `result`."
        )
    return text.strip()


def _json_response(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": REF_TEMPLATE.format(model=schema)}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _request_schema(spec: FunctionSpec, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = _hoist(spec.arguments.json_schema(ref_template=REF_TEMPLATE), schemas)
    for param in spec.parameters:  # TypedDicts carry no defaults; the signature does
        if param.required or param.name not in schema.get("properties", {}):
            continue
        try:
            schema["properties"][param.name]["default"] = to_jsonable_python(param.default)
        except Exception:
            continue  # a default with no JSON form is simply not documented
    schema["title"] = f"{spec.name} arguments"
    return schema


def _result_schema(spec: FunctionSpec, schemas: dict[str, Any]) -> dict[str, Any]:
    annotation = spec.return_annotation
    if annotation in (inspect.Signature.empty, Any):
        return {}
    try:
        schema = TypeAdapter(annotation).json_schema(mode="serialization", ref_template=REF_TEMPLATE)
    except Exception:
        return {}  # an annotation pydantic cannot describe: leave the result open
    return _hoist(schema, schemas)


def _hoist(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """Move nested model definitions into components/schemas, shared by every operation."""
    schemas.update(schema.pop("$defs", {}))
    return schema
