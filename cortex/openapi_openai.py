"""The OpenAPI description of the OpenAI routes: which functions list them, their bodies and answers.

Every function answers `{fn}/chat/completions`, `completions`, `embeddings` and `models`, but a
function only makes sense behind a route when it receives what that route carries: the document
lists chat for functions declaring `messages`, completions for `prompt`, embeddings for `input`,
and `models` beside any of them.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from cortex.discovery import FunctionSpec
from cortex.openai_compat.models import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingsRequest,
    ErrorBody,
    ModelCard,
    ModelList,
    TextCompletion,
)
from cortex.openai_compat.routes import Endpoint
from cortex.openapi_runs import ACCEPTED_RESPONSE, CALL_PARAMETERS, SSE_EVENT

# A dot, which no Python class name holds: a user's `ChatMessage` model cannot replace OpenAI's.
COMPONENT_PREFIX = "OpenAI."
TAG = "OpenAI-compatible"
PAYLOAD_FIELDS = {Endpoint.CHAT: "messages", Endpoint.COMPLETIONS: "prompt", Endpoint.EMBEDDINGS: "input"}
_RUNS_SEGMENT = "runs"  # /{app}/runs/... is the runs API, so a function named `runs` has no OpenAI routes

_REQUESTS: dict[Endpoint, type[BaseModel]] = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingsRequest,
}
_ANSWERS: dict[Endpoint, type[BaseModel]] = {
    Endpoint.CHAT: ChatCompletion,
    Endpoint.COMPLETIONS: TextCompletion,
    Endpoint.EMBEDDINGS: EmbeddingList,
}
_KINDS = {
    Endpoint.CHAT: "chat completion",
    Endpoint.COMPLETIONS: "completion",
    Endpoint.EMBEDDINGS: "embeddings",
}
_STREAMS = {
    Endpoint.CHAT: "`chat.completion.chunk`",
    Endpoint.COMPLETIONS: "`text_completion`",
}
_CALL_REJECTIONS = {
    "400": "The body is not JSON, or `stream`, `encoding_format` or a call option is invalid",
    "404": "Unknown project, app or function",
    "405": "Only POST calls this route",
    "413": "The body is larger than CORTEX_MAX_BODY_BYTES",
    "422": "The body is not an object, its fields do not match the function's parameters, or the "
    "webhook URL is refused",
    "429": "replica_concurrency and CORTEX_MAX_QUEUE are both full; see Retry-After",
    "500": "The function raised, or its result cannot be given this route's shape",
    "503": "main.py is still being imported, or the run store is unavailable; see Retry-After",
    "504": "The call outlived response_grace_period",
}
_MODEL_REJECTIONS = {
    "404": "Unknown project, app, function or model",
    "405": "Only GET lists models",
    "503": "main.py is still being imported; see Retry-After",
}


def openai_endpoints(spec: FunctionSpec) -> list[Endpoint]:
    """The OpenAI routes the document lists for `spec`: those whose payload field it declares."""
    if spec.name == _RUNS_SEGMENT:
        return []
    declared = set(spec.parameter_names)
    return [endpoint for endpoint, field in PAYLOAD_FIELDS.items() if field in declared]


def openai_components() -> dict[str, Any]:
    """The OpenAI answers and error body as components (`OpenAI.ChatCompletion`, ...)."""
    return copy.deepcopy(_generated()[1])


def openai_paths(
    function_path: str, spec: FunctionSpec, request: dict[str, Any], model: str
) -> dict[str, Any]:
    """The OpenAI paths of one function; `request` is the schema of its own arguments."""
    endpoints = openai_endpoints(spec)
    if not endpoints:
        return {}
    paths: dict[str, Any] = {
        f"{function_path}/{endpoint.value}": {"post": _call_operation(spec, endpoint, request)}
        for endpoint in endpoints
    }
    paths[f"{function_path}/{Endpoint.MODELS.value}"] = {"get": _list_models(spec, model)}
    paths[f"{function_path}/{Endpoint.MODELS.value}/{{model_id}}"] = {"get": _get_model(spec, model)}
    return paths


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{COMPONENT_PREFIX}{name}"}


@functools.cache
def _generated() -> tuple[dict[Endpoint, dict[str, Any]], dict[str, Any]]:
    """(request schema per route, components), generated once: they do not depend on the app."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (model.__name__, "validation", TypeAdapter(model)) for model in _REQUESTS.values()
    ]
    answers: list[type[BaseModel]] = [*_ANSWERS.values(), ModelList, ModelCard, ErrorBody]
    inputs += [(model.__name__, "serialization", TypeAdapter(model)) for model in answers]
    template = "#/components/schemas/" + COMPONENT_PREFIX + "{model}"
    _, definitions = TypeAdapter.json_schemas(inputs, ref_template=template)
    defs: dict[str, Any] = definitions["$defs"]
    # A function's own chat.completion dict is answered as it is: more fields than ours are fine.
    for name in (model.__name__ for model in answers):
        _open_objects(defs, name)
    requests = {endpoint: defs.pop(model.__name__) for endpoint, model in _REQUESTS.items()}
    return requests, {COMPONENT_PREFIX + name: schema for name, schema in defs.items()}


def _open_objects(defs: dict[str, Any], name: str) -> None:
    schema = defs[name]
    if schema.get("additionalProperties") is False:
        del schema["additionalProperties"]
        for prop in schema.get("properties", {}).values():
            target = prop.get("$ref") or prop.get("items", {}).get("$ref")
            if target:
                _open_objects(defs, target.rsplit(".", 1)[1])


def _request_schema(spec: FunctionSpec, endpoint: Endpoint, own: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's fields, with the function's own schema for the ones it declares.

    Only the function's required parameters are required: the fields it does not declare are
    accepted and dropped (all passed on when it takes **kwargs).
    """
    schema = copy.deepcopy(_generated()[0][endpoint])
    declared = own.get("properties", {})
    schema["properties"] = {**schema["properties"], **copy.deepcopy(declared)}
    schema["required"] = list(own.get("required", []))
    if not schema["required"]:
        del schema["required"]
    schema["additionalProperties"] = True
    schema["title"] = f"{spec.name} {_KINDS[endpoint]} request"
    if spec.takes_extra_kwargs:
        passed = f"{spec.name}() takes **kwargs: it receives every field."
    else:
        names = ", ".join(f"`{name}`" for name in declared) or "none"
        passed = f"{spec.name}() receives the fields it declares ({names}); the others are dropped."
    schema["description"] = f"OpenAI's {_KINDS[endpoint]} request. {passed}"
    return schema


def _call_operation(spec: FunctionSpec, endpoint: Endpoint, own: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": ref(_ANSWERS[endpoint].__name__)}}
    description = (
        f"`{spec.name}()`'s result as OpenAI's answer: a dict is sent as it is, text and chunks are "
        "joined into one completion, vectors are wrapped into an embeddings list."
    )
    if endpoint in _STREAMS:
        ok["text/event-stream"] = {"schema": SSE_EVENT}
        description += (
            f' With `"stream": true`: {_STREAMS[endpoint]} events, then `data: [DONE]`; a failure '
            'mid-stream is sent as a `data: {"error": {...}}` event.'
        )
    responses: dict[str, Any] = {"200": {"description": description, "content": ok}, "202": ACCEPTED_RESPONSE}
    responses.update({status: _error(why) for status, why in _CALL_REJECTIONS.items()})
    return {
        "operationId": f"{spec.name}.{endpoint.value.replace('/', '_')}",
        "tags": [TAG],
        "summary": f"OpenAI {_KINDS[endpoint]} served by {spec.name}()",
        "parameters": CALL_PARAMETERS,
        "requestBody": {
            "required": any(param.required for param in spec.parameters),
            "content": {"application/json": {"schema": _request_schema(spec, endpoint, own)}},
        },
        "responses": responses,
    }


def _list_models(spec: FunctionSpec, model: str) -> dict[str, Any]:
    ok = {"description": f"The one model {spec.name}() serves: `{model}`", "content": _json(ref("ModelList"))}
    return {
        "operationId": f"{spec.name}.models",
        "tags": [TAG],
        "summary": f"List the model {spec.name}() serves",
        "responses": {"200": ok, **{status: _error(why) for status, why in _MODEL_REJECTIONS.items()}},
    }


def _get_model(spec: FunctionSpec, model: str) -> dict[str, Any]:
    ok = {"description": "The model", "content": _json(ref("ModelCard"))}
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "description": f"`{model}`; any other id is 404. An id may hold a `/`, sent as it is or as %2F.",
        "schema": {"type": "string"},
        "example": model,
    }
    return {
        "operationId": f"{spec.name}.model",
        "tags": [TAG],
        "summary": f"Describe the model {spec.name}() serves",
        "parameters": [model_id],
        "responses": {"200": ok, **{status: _error(why) for status, why in _MODEL_REJECTIONS.items()}},
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(ref("ErrorBody"))}
