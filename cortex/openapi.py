"""The OpenAPI 3.1 document of an app's function routes, built once from the type hints."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from pydantic_core import to_jsonable_python

from cortex import __version__
from cortex.discovery import FunctionSpec, Registry
from cortex.openapi_runs import CALL_PARAMETERS, RUN_SCHEMA, run_paths

REF_TEMPLATE = "#/components/schemas/{model}"
# Cortex's own components, named so that a user's `Error` model cannot replace them.
ERROR_SCHEMA = "CortexError"
FAILURE_SCHEMA = "CortexRunFailure"
RUN_SCHEMA_NAME = "CortexRun"

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
    specs = list(registry.functions.values())
    requests, results, definitions = _generate_schemas(specs)
    schemas = {
        **definitions,
        ERROR_SCHEMA: _ERROR_SCHEMA,
        FAILURE_SCHEMA: _FAILURE_SCHEMA,
        RUN_SCHEMA_NAME: RUN_SCHEMA,
    }
    paths = {
        f"{base_path}/{spec.name}": {"post": _operation(spec, requests[spec.name], results[spec.name])}
        for spec in specs
    }
    paths.update(run_paths(base_path, _ref(RUN_SCHEMA_NAME), _ref(ERROR_SCHEMA)))
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


_Key = tuple[str, str]  # (function name, "request" | "result")


def _generate_schemas(
    specs: list[FunctionSpec],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Request and result schemas of every function, generated in one pass.

    One pass gives two different models that share a class name two different component names;
    a hint pydantic cannot describe leaves that one schema open instead of failing the document.
    """
    inputs: list[tuple[_Key, JsonSchemaMode, TypeAdapter[Any]]] = []
    for spec in specs:
        inputs.append(((spec.name, "request"), "validation", spec.arguments))
        result = _result_adapter(spec)
        if result is not None:
            inputs.append(((spec.name, "result"), "serialization", result))
    describable = [item for item in inputs if _can_describe(item[2], item[1])]
    generated, definitions = TypeAdapter.json_schemas(describable, ref_template=REF_TEMPLATE)
    defs: dict[str, Any] = definitions.get("$defs", {})
    requests, results = {}, {}
    for spec in specs:
        request = generated.get(((spec.name, "request"), "validation"))
        # Each function's arguments are its own TypedDict: inline it rather than list it.
        requests[spec.name] = _request_schema(spec, _inline(request, defs) if request else None)
        result_schema = generated.get(((spec.name, "result"), "serialization"), {})
        results[spec.name] = {"type": "array"} if spec.kind.is_streaming else result_schema
    return requests, results, defs


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if set(schema) != {"$ref"}:
        return schema
    inlined: dict[str, Any] = defs.pop(schema["$ref"].rsplit("/", 1)[1])
    return inlined


def _result_adapter(spec: FunctionSpec) -> TypeAdapter[Any] | None:
    if spec.kind.is_streaming or spec.return_annotation in (inspect.Signature.empty, Any):
        return None
    try:
        return TypeAdapter(spec.return_annotation)
    except Exception:
        return None  # an annotation pydantic cannot handle: the result stays undocumented


def _can_describe(adapter: TypeAdapter[Any], mode: JsonSchemaMode) -> bool:
    try:
        adapter.json_schema(mode=mode)
    except Exception:
        return False
    return True


def _operation(spec: FunctionSpec, request: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
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
        responses[status] = _json_response(why, ERROR_SCHEMA)
    responses["500"] = _json_response("The function raised, or its result is not JSON", FAILURE_SCHEMA)
    responses["504"] = _json_response("The call outlived response_grace_period", FAILURE_SCHEMA)
    responses["202"] = {
        "description": "With ?async=true: accepted; poll the Location header",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"run_id": {"type": "string"}, "status": {"const": "pending"}},
                }
            }
        },
    }
    return {
        "operationId": spec.name,
        "summary": spec.doc.splitlines()[0] if spec.doc else f"Call {spec.name}()",
        "description": _describe(spec),
        "parameters": CALL_PARAMETERS,
        "requestBody": {"required": False, "content": {"application/json": {"schema": request}}},
        "responses": responses,
    }


def _schema_per_parameter(spec: FunctionSpec) -> dict[str, Any]:
    """When one hint has no JSON schema, still document every parameter that has one."""
    properties = {p.name: _plain_schema(p.annotation) for p in spec.parameters}
    required = [p.name for p in spec.parameters if p.required]
    return {"type": "object", "properties": properties, "required": required}


def _plain_schema(annotation: Any) -> dict[str, Any]:
    try:
        schema: dict[str, Any] = TypeAdapter(annotation).json_schema()
    except Exception:
        return {}  # any value: pydantic validates it, JSON schema cannot say how
    return {} if "$defs" in schema else schema


def _describe(spec: FunctionSpec) -> str:
    text = spec.doc
    if spec.kind.is_streaming:
        text += (
            "\n\nA generator: send `Accept: text/event-stream` to receive its chunks as Server-Sent "
            "Events; otherwise the chunks are collected into a list in `result`."
        )
    return text.strip()


def _ref(schema: str) -> str:
    return REF_TEMPLATE.format(model=schema)


def _json_response(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": _ref(schema)}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _request_schema(spec: FunctionSpec, generated: dict[str, Any] | None) -> dict[str, Any]:
    schema = generated if generated is not None else _schema_per_parameter(spec)
    for param in spec.parameters:  # TypedDicts carry no defaults; the signature does
        if param.required or param.name not in schema.get("properties", {}):
            continue
        try:
            schema["properties"][param.name]["default"] = to_jsonable_python(param.default)
        except Exception:
            continue  # a default with no JSON form is simply not documented
    schema["title"] = f"{spec.name} arguments"
    return schema
