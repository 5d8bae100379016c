"""GET /openapi.json describes every function of the served app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.conftest import APPS, Served, serving

OPENAI_BASE = "/v4/p-local/openai-app"


def test_openapi_lists_every_function_with_its_request_schema():
    with serving(APPS / "echo") as served, served.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "echo-app"
    assert list(OpenAPIV31SpecValidator(document).iter_errors()) == []
    functions = {
        path
        for path, item in document["paths"].items()
        if "Functions" in item.get("post", {}).get("tags", [])
    }
    assert functions == {
        f"/v4/p-local/echo-app/{name}"
        for name in [
            "predict",
            "apredict",
            "with_run_id",
            "run_id_first",
            "buy",
            "model_out",
            "created",
            "anything",
            "no_args",
            "untyped",
        ]
    }
    operation = document["paths"]["/v4/p-local/echo-app/predict"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["prompt"]["type"] == "string"
    assert schema["properties"]["n"] == {"default": 1, "title": "N", "type": "integer"}
    assert schema["additionalProperties"] is False
    assert {"200", "202", "400", "404", "413", "422", "429", "500", "504"} <= set(operation["responses"])
    assert [p["name"] for p in operation["parameters"]][:2] == ["async", "webhookEndpoint"]
    assert set(document["paths"]["/v4/p-local/echo-app/runs/{run_id}"]) == {"get", "delete"}
    buy = document["paths"]["/v4/p-local/echo-app/buy"]["post"]
    item_ref = buy["requestBody"]["content"]["application/json"]["schema"]["properties"]["item"]["$ref"]
    assert item_ref == "#/components/schemas/Item"
    assert "price" in document["components"]["schemas"]["Item"]["properties"]


def test_openapi_marks_generators_as_event_streams():
    with serving(APPS / "stream_words") as served, served.client() as client:
        document = client.get("/openapi.json").json()
    content = document["paths"]["/v4/p-local/stream-words/words"]["post"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}


@pytest.fixture(scope="module")
def openai_served() -> Iterator[Served]:
    with serving(APPS / "openai_app") as served:
        yield served


@pytest.fixture(scope="module")
def openai_document(openai_served: Served) -> dict[str, Any]:
    with openai_served.client() as client:
        document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def test_openai_routes_are_documented_for_the_functions_that_take_their_fields(openai_document):
    assert list(OpenAPIV31SpecValidator(openai_document).iter_errors()) == []
    openai = {
        path.removeprefix(OPENAI_BASE + "/")
        for path, item in openai_document["paths"].items()
        for op in item.values()
        if op["tags"] == ["OpenAI-compatible"] and "/models" not in path
    }
    chat = ["run", "chat_dicts", "chat_words", "chat_dict", "chat_text", "with_kwargs", "needs_prompt"]
    chat += ["explode", "explode_midway", "endless", "aendless"]
    assert openai == {
        *(f"{name}/chat/completions" for name in chat),
        "needs_prompt/completions",
        "complete/completions",
        *(f"{name}/embeddings" for name in ["embed", "embed_one", "embed_full", "embed_wrong"]),
    }
    assert set(openai_document["paths"][f"{OPENAI_BASE}/run/models"]) == {"get"}
    [model_id] = openai_document["paths"][f"{OPENAI_BASE}/run/models/{{model_id}}"]["get"]["parameters"]
    assert model_id["example"] == "echo-llm"


def test_the_health_ready_and_document_routes_are_documented(openai_document):
    for path in ("/health", "/ready", "/openapi.json"):
        assert openai_document["paths"][path]["get"]["tags"] == ["Service"]


def conforms(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> list[str]:
    """Why `body` does not match what the document says `path` answers with `status` (as JSON)."""
    response = document["paths"][path][method]["responses"][str(status)]
    schema = {**response["content"]["application/json"]["schema"], "components": document["components"]}
    return [error.message for error in OAS31Validator(schema).iter_errors(body)]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (
            "run/chat/completions",
            {"model": "echo-llm", "messages": [{"role": "user", "content": "a b"}]},
            200,
        ),
        ("chat_dict/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 200),
        ("complete/completions", {"prompt": "one two"}, 200),
        ("embed/embeddings", {"input": ["a", "bb"]}, 200),
        ("embed/embeddings", {"input": "a", "encoding_format": "base64"}, 200),
        ("run/chat/completions", {"messages": "not a list"}, 422),
        ("run/chat/completions", {"messages": [], "stream": "yes"}, 400),
        ("explode/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 500),
        ("embed_wrong/embeddings", {"input": "x"}, 500),
    ],
)
def test_openai_answers_match_the_documented_schemas(openai_served, openai_document, path, body, status):
    with openai_served.client() as client:
        response = client.post(f"{openai_served.base}/{path}", json=body)
    assert response.status_code == status, response.text
    assert conforms(openai_document, f"{OPENAI_BASE}/{path}", "post", status, response.json()) == []


def test_openai_models_answers_match_the_documented_schemas(openai_served, openai_document):
    base = openai_served.base
    with openai_served.client() as client:
        listed = client.get(f"{base}/run/models")
        card = client.get(f"{base}/run/models/echo-llm")
        unknown = client.get(f"{base}/run/models/other")
    path = f"{OPENAI_BASE}/run/models"
    assert conforms(openai_document, path, "get", 200, listed.json()) == []
    assert conforms(openai_document, path + "/{model_id}", "get", 200, card.json()) == []
    assert conforms(openai_document, path + "/{model_id}", "get", 404, unknown.json()) == []
