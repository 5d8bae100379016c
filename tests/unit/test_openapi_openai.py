"""The OpenAI routes in the OpenAPI document: which functions list them, bodies, answers, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from cortex.discovery import Registry, discover
from cortex.openai_compat.routes import Endpoint
from cortex.openapi import build_openapi
from cortex.openapi_openai import openai_endpoints

BASE = "/v4/p-123/llm-app"

MAIN = """
from pydantic import BaseModel


class ChatMessage(BaseModel):  # the name of an OpenAI component, on purpose
    role: str
    text: str


def chat(messages: list[ChatMessage], model: str = "", stream: bool = True, temperature: float = 0.7):
    yield "hi"


chat.__cortex_model__ = "org/chat-model"


def complete(prompt: str, max_tokens: int = 16) -> str:
    return prompt


def embed(input: list[str]) -> list[list[float]]:
    return [[0.0]]


def both(prompt: str, messages: list) -> str:
    return prompt


def open_ended(messages: list, **options):
    return "ok"


def plain(text: str) -> str:
    return text
"""


@pytest.fixture
def registry(app_dir: Path) -> Registry:
    (app_dir / "main.py").write_text(textwrap.dedent(MAIN))
    return discover(app_dir)


@pytest.fixture
def document(registry: Registry) -> dict[str, Any]:
    return build_openapi(BASE, "llm-app", registry)


def op(document: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][f"{BASE}/{path}"][method]
    return found


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    schema: dict[str, Any] = op(document, path)["requestBody"]["content"]["application/json"]["schema"]
    return schema


@pytest.mark.parametrize(
    ("function", "endpoints"),
    [
        ("chat", [Endpoint.CHAT]),
        ("complete", [Endpoint.COMPLETIONS]),
        ("embed", [Endpoint.EMBEDDINGS]),
        ("both", [Endpoint.CHAT, Endpoint.COMPLETIONS]),
        ("open_ended", [Endpoint.CHAT]),
        ("plain", []),
    ],
)
def test_a_route_is_listed_for_functions_that_declare_its_payload_field(
    registry: Registry, function: str, endpoints: list[Endpoint]
) -> None:
    assert openai_endpoints(registry.functions[function]) == endpoints


def test_document_with_openai_routes_passes_the_openapi_3_1_validator(document: dict[str, Any]) -> None:
    assert [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()] == []


def test_each_openai_function_gets_its_routes_and_the_models_routes(document: dict[str, Any]) -> None:
    chat = [path.removeprefix(f"{BASE}/") for path in document["paths"] if path.startswith(f"{BASE}/chat")]
    assert chat == ["chat", "chat/chat/completions", "chat/models", "chat/models/{model_id}"]
    assert list(document["paths"][f"{BASE}/chat/models"]) == ["get"]
    assert f"{BASE}/both/completions" in document["paths"]
    assert f"{BASE}/embed/embeddings" in document["paths"]
    assert not any(path.startswith(f"{BASE}/plain/") for path in document["paths"])
    assert op(document, "chat/chat/completions")["operationId"] == "chat.chat_completions"
    assert op(document, "chat/models/{model_id}", "get")["operationId"] == "chat.model"


def test_request_is_openai_fields_with_the_functions_own_schema_for_those_it_declares(
    document: dict[str, Any],
) -> None:
    schema = body_schema(document, "chat/chat/completions")
    assert schema["title"] == "chat chat completion request"
    assert schema["properties"]["messages"] == {
        "items": {"$ref": "#/components/schemas/ChatMessage"},  # the user's model, not OpenAI's
        "title": "Messages",
        "type": "array",
    }
    assert schema["properties"]["temperature"]["default"] == 0.7
    assert schema["properties"]["tools"]["anyOf"][0]["type"] == "array"  # OpenAI's, not declared
    assert schema["required"] == ["messages"]  # `model` is OpenAI's but chat() does not need it
    assert schema["additionalProperties"] is True
    assert op(document, "chat/chat/completions")["requestBody"]["required"] is True
    assert schema["description"] == (
        "OpenAI's chat completion request. chat() receives the fields it declares (`messages`, `model`, "
        "`stream`, `temperature`); the others are dropped."
    )
    assert "**kwargs" in body_schema(document, "open_ended/chat/completions")["description"]


def test_embeddings_request_documents_encoding_format(document: dict[str, Any]) -> None:
    schema = body_schema(document, "embed/embeddings")
    assert schema["properties"]["input"] == {"items": {"type": "string"}, "title": "Input", "type": "array"}
    assert schema["properties"]["encoding_format"]["anyOf"][0] == {
        "enum": ["float", "base64"],
        "type": "string",
    }


def test_answers_are_openai_objects_and_streams_are_event_streams(document: dict[str, Any]) -> None:
    chat = op(document, "chat/chat/completions")["responses"]["200"]["content"]
    assert chat["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAI.ChatCompletion"}
    assert chat["text/event-stream"]["schema"]["title"] == "Server-Sent Event"
    completion = op(document, "complete/completions")["responses"]["200"]["content"]
    assert completion["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAI.TextCompletion"}
    embeddings = op(document, "embed/embeddings")["responses"]["200"]["content"]
    assert list(embeddings) == ["application/json"]
    assert embeddings["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAI.EmbeddingList"}


def test_errors_are_openai_error_bodies(document: dict[str, Any]) -> None:
    responses = op(document, "chat/chat/completions")["responses"]
    assert {"200", "202", "400", "404", "405", "413", "422", "429", "500", "503", "504"} == set(responses)
    for status in ("400", "404", "422", "500", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/OpenAI.ErrorBody"}, status
    detail = document["components"]["schemas"]["OpenAI.ErrorDetail"]
    assert detail["required"] == ["message", "type"]
    assert set(detail["properties"]) == {"message", "type", "param", "code"}


def test_openai_components_do_not_replace_a_user_model_of_the_same_name(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["ChatMessage"]["properties"]) == {"role", "text"}
    assert set(schemas["OpenAI.ChatMessage"]["properties"]) == {"role", "content", "tool_calls"}


def test_answers_may_carry_more_fields_than_ours(document: dict[str, Any]) -> None:
    """A function's own chat.completion dict is sent as it is, vLLM's extra fields included."""
    schemas = document["components"]["schemas"]
    for name in ("ChatCompletion", "ChatChoice", "ChatMessage", "EmbeddingList", "Embedding", "ModelCard"):
        assert "additionalProperties" not in schemas[f"OpenAI.{name}"], name


def test_models_routes_name_the_served_model(document: dict[str, Any]) -> None:
    listed = op(document, "chat/models", "get")
    assert listed["responses"]["200"]["description"] == "The one model chat() serves: `org/chat-model`"
    assert listed["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAI.ModelList"
    }
    [model_id] = op(document, "chat/models/{model_id}", "get")["parameters"]
    assert model_id["example"] == "org/chat-model"
    [fallback] = op(document, "complete/models/{model_id}", "get")["parameters"]
    assert fallback["example"] == "llm-app"  # no __cortex_model__: the app's name


def test_openai_calls_take_the_async_and_webhook_options(document: dict[str, Any]) -> None:
    call = op(document, "embed/embeddings")
    assert [p["name"] for p in call["parameters"]][:2] == ["async", "webhookEndpoint"]
    assert call["responses"]["202"]["content"]["application/json"]["schema"]["required"] == [
        "run_id",
        "status",
    ]
