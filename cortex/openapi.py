"""The OpenAPI 3.1 document of an app's function routes, built once from the type hints."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from pydantic_core import to_jsonable_python

from cortex import __version__
from cortex.discovery import FunctionSpec, Registry
from cortex.openai_compat.models import served_model
from cortex.openapi_openai import TAG as OPENAI_TAG
from cortex.openapi_openai import openai_components, openai_paths
from cortex.openapi_runs import ACCEPTED_RESPONSE, CALL_PARAMETERS, RUN_SCHEMA, SSE_EVENT, run_paths
from cortex.openapi_runs import TAG as RUNS_TAG

REF_TEMPLATE = "#/components/schemas/{model}"
# Cortex's own components, named so that a user's `Error` model cannot replace them.
ERROR_SCHEMA = "CortexError"
FAILURE_SCHEMA = "CortexRunFailure"
RUN_SCHEMA_NAME = "CortexRun"
FUNCTIONS_TAG = "Functions"
SERVICE_TAG = "Service"
TAGS = [
    {"name": FUNCTIONS_TAG, "description": "The public functions of main.py"},
    {"name": OPENAI_TAG, "description": "Functions behind OpenAI's API, for the official clients"},
    {"name": RUNS_TAG, "description": "Async runs: poll, list, cancel, replay events"},
    {"name": SERVICE_TAG, "description": "Liveness, readiness and this document"},
]

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


def build_openapi(
    base_path: str, app_name: str, registry: Registry, is_open: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """The document; with `is_open` (auth is on), every other path requires a bearer token."""
    specs = list(registry.functions.values())
    requests, results, definitions = _generate_schemas(specs)
    schemas = {
        **definitions,
        ERROR_SCHEMA: _ERROR_SCHEMA,
        FAILURE_SCHEMA: _FAILURE_SCHEMA,
        RUN_SCHEMA_NAME: RUN_SCHEMA,
        **openai_components(),
    }
    paths: dict[str, Any] = {}
    for spec in specs:
        path = f"{base_path}/{spec.name}"
        paths[path] = {"post": _operation(spec, requests[spec.name], results[spec.name])}
        model = served_model(spec.func, registry.module, app_name)
        paths.update(openai_paths(path, spec, requests[spec.name], model))
    for path, item in run_paths(base_path, _ref(RUN_SCHEMA_NAME), _ref(ERROR_SCHEMA)).items():
        paths[path] = {**paths.get(path, {}), **item}  # a function named `runs` keeps its POST
    paths.update(_service_paths())
    components: dict[str, Any] = {"schemas": schemas}
    if is_open is not None:
        components["securitySchemes"] = {BEARER_SCHEME: _BEARER}
        _require_tokens(paths, is_open)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": app_name,
            "version": __version__,
            "description": f"Served by Cortex {__version__}",
        },
        "tags": TAGS,
        "paths": paths,
        "components": components,
    }


PROXY_METHODS = ("get", "post", "put", "patch", "delete")


def build_proxy_openapi(
    base_path: str, app_name: str, is_open: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """A custom runtime: any path is forwarded to the app's own server; runs work as usual."""
    schemas = {ERROR_SCHEMA: _ERROR_SCHEMA, FAILURE_SCHEMA: _FAILURE_SCHEMA, RUN_SCHEMA_NAME: RUN_SCHEMA}
    paths: dict[str, Any] = {f"{base_path}/{{path}}": _forwarded_item()}
    paths.update(run_paths(base_path, _ref(RUN_SCHEMA_NAME), _ref(ERROR_SCHEMA)))
    paths.update(_service_paths())
    components: dict[str, Any] = {"schemas": schemas}
    if is_open is not None:
        components["securitySchemes"] = {BEARER_SCHEME: _BEARER}
        _require_tokens(paths, is_open)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": app_name,
            "version": __version__,
            "description": f"A custom runtime served by Cortex {__version__}: every path under "
            f"{base_path}/ is forwarded to the app's own server.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": components,
    }


def _forwarded_item() -> dict[str, Any]:
    parameter = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
    item: dict[str, Any] = {}
    for method in PROXY_METHODS:
        responses = {
            "default": {"description": "The app's own answer, passed through"},
            "502": _json_response("The app's server did not answer", ERROR_SCHEMA),
            "503": _json_response("The app's server is not ready yet; see Retry-After", ERROR_SCHEMA),
            "504": _json_response("No answer within response_grace_period", ERROR_SCHEMA),
        }
        operation: dict[str, Any] = {
            "operationId": f"forward_{method}",
            "tags": [FUNCTIONS_TAG],
            "summary": f"{method.upper()} /{{path}} on the app's own server",
            "parameters": [parameter],
            "responses": responses,
        }
        if method == "post":
            operation["parameters"] = [parameter, *CALL_PARAMETERS]
            operation["responses"]["202"] = ACCEPTED_RESPONSE
        item[method] = operation
    return item


BEARER_SCHEME = "bearerAuth"
_BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "projectId claim"}
_AUTH_REFUSALS = {
    "401": "No token, or one that is invalid or expired; see WWW-Authenticate",
    "403": "A valid token for another project",
}


def _require_tokens(paths: dict[str, Any], is_open: Callable[[str], bool]) -> None:
    refusals = {status: _json_response(why, ERROR_SCHEMA) for status, why in _AUTH_REFUSALS.items()}
    for path, item in paths.items():
        if not is_open(path):  # copies: parts of an operation may be shared constants
            paths[path] = {
                method: {
                    **operation,
                    "security": [{BEARER_SCHEME: []}],
                    "responses": {**refusals, **operation["responses"]},
                }
                for method, operation in item.items()
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
        ok["text/event-stream"] = {"schema": SSE_EVENT}
    responses: dict[str, Any] = {"200": {"description": "The function's result", "content": ok}}
    for status, why in _REJECTIONS.items():
        responses[status] = _json_response(why, ERROR_SCHEMA)
    responses["500"] = _json_response("The function raised, or its result is not JSON", FAILURE_SCHEMA)
    responses["504"] = _json_response("The call outlived response_grace_period", FAILURE_SCHEMA)
    responses["202"] = ACCEPTED_RESPONSE
    return {
        "operationId": spec.name,
        "tags": [FUNCTIONS_TAG],
        "summary": spec.doc.splitlines()[0] if spec.doc else f"Call {spec.name}()",
        "description": _describe(spec),
        "parameters": CALL_PARAMETERS,
        "requestBody": {
            # An empty body means no arguments: it is only enough when none is required.
            "required": any(param.required for param in spec.parameters),
            "content": {"application/json": {"schema": request}},
        },
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


def _service_paths() -> dict[str, Any]:
    error = _json_response("Not ready yet, or the document could not be built", ERROR_SCHEMA)
    ready = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ready", "loading"]},
            "functions": {"type": "array", "items": {"type": "string"}},
            "message": {"type": "string"},
        },
    }

    def get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "operationId": operation_id,
                "tags": [SERVICE_TAG],
                "summary": summary,
                "responses": responses,
            }
        }

    return {
        "/health": get(
            "health",
            "Liveness: the server answers",
            {
                "200": _json_schema_response(
                    "Alive", {"type": "object", "properties": {"status": {"const": "ok"}}}
                )
            },
        ),
        "/ready": get(
            "ready",
            "Readiness: main.py is imported",
            {
                "200": _json_schema_response("Ready, with the functions served", ready),
                "503": _json_schema_response("main.py is still being imported; see Retry-After", ready),
            },
        ),
        "/openapi.json": get(
            "openapi",
            "This document",
            {"200": _json_schema_response("OpenAPI 3.1", {"type": "object"}), "500": error, "503": error},
        ),
    }


def _ref(schema: str) -> str:
    return REF_TEMPLATE.format(model=schema)


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return _json_schema_response(description, {"$ref": _ref(schema)})


def _json_schema_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


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
