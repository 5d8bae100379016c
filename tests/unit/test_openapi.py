"""The OpenAPI 3.1 document built from main.py's functions and their type hints."""

from __future__ import annotations

import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from cortex import __version__
from cortex.discovery import Registry, build_spec, discover
from cortex.openapi import build_openapi

BASE = "/v4/p-123/my-app"

MAIN = '''
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel


class Inner(BaseModel):
    level: int
    note: str = "n"


class Settings(BaseModel):
    name: str
    inner: Inner
    ratio: float = 0.5


def predict(prompt: str, n: int = 3, tags: list[str] | None = None, run_id: str = "") -> dict[str, int]:
    """Score a prompt.

    Longer explanation."""
    return {}


def configure(settings: Settings, flag: bool, limit: Optional[int] = None) -> Settings:
    return settings


def stream_words(text: str, sep: str = " "):
    """Split text into words."""
    yield from text.split(sep)


async def tokens(prompt: str):
    yield prompt


def passthrough(model: str, **options):
    return options


def odd_default(marker=object()):
    return 1
'''


@pytest.fixture
def document(app_dir: Path) -> dict[str, Any]:
    (app_dir / "main.py").write_text(textwrap.dedent(MAIN))
    return build_openapi(BASE, "my-app", discover(app_dir))


def operation(document: dict[str, Any], name: str) -> dict[str, Any]:
    op: dict[str, Any] = document["paths"][f"{BASE}/{name}"]["post"]
    return op


def request_schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = operation(document, name)["requestBody"]["content"]["application/json"]["schema"]
    return schema


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (one level) to the schema it names."""
    if "$ref" not in schema:
        return schema
    node: Any = document
    for part in schema["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_document_is_openapi_3_1_titled_after_the_app(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {
        "title": "my-app",
        "version": __version__,
        "description": f"Served by Cortex {__version__}",
    }


def test_document_passes_the_openapi_3_1_validator(document: dict[str, Any]) -> None:
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def tagged(document: dict[str, Any], tag: str) -> list[str]:
    """`METHOD path` of each operation with `tag`, in document order."""
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, op in item.items()
        if tag in op["tags"]
    ]


def test_each_function_has_one_post_path(document: dict[str, Any]) -> None:
    names = ["predict", "configure", "stream_words", "tokens", "passthrough", "odd_default"]
    assert tagged(document, "Functions") == [f"POST {BASE}/{name}" for name in names]
    assert [operation(document, name)["operationId"] for name in names] == names


def test_every_operation_is_tagged_and_every_tag_is_declared(document: dict[str, Any]) -> None:
    declared = [tag["name"] for tag in document["tags"]]
    assert declared == ["Functions", "OpenAI-compatible", "Runs", "Service"]
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert all(len(op["tags"]) == 1 and op["tags"][0] in declared for op in operations)
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))


def test_health_ready_and_the_document_itself_are_described(document: dict[str, Any]) -> None:
    assert tagged(document, "Service") == ["GET /health", "GET /ready", "GET /openapi.json"]
    ready = document["paths"]["/ready"]["get"]["responses"]
    assert set(ready) == {"200", "503"}
    assert ready["503"]["content"]["application/json"]["schema"]["properties"]["status"] == {
        "enum": ["ready", "loading"]
    }


def test_request_schema_lists_parameters_required_and_defaults(document: dict[str, Any]) -> None:
    schema = request_schema(document, "predict")
    assert schema["type"] == "object"
    assert schema["title"] == "predict arguments"
    assert list(schema["properties"]) == ["prompt", "n", "tags"]  # never run_id
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["prompt"]["type"] == "string"
    assert schema["properties"]["n"] == {"title": "N", "type": "integer", "default": 3}
    assert schema["properties"]["tags"]["default"] is None
    assert schema["properties"]["tags"]["anyOf"] == [
        {"type": "array", "items": {"type": "string"}},
        {"type": "null"},
    ]
    assert schema["additionalProperties"] is False


def test_request_schema_of_var_keyword_function_allows_other_properties(document: dict[str, Any]) -> None:
    schema = request_schema(document, "passthrough")
    assert schema["required"] == ["model"]
    assert schema["additionalProperties"] is True


def test_default_without_a_json_form_is_left_out(document: dict[str, Any]) -> None:
    assert "default" not in request_schema(document, "odd_default")["properties"]["marker"]


def test_request_body_is_required_only_by_functions_with_a_required_parameter(
    document: dict[str, Any],
) -> None:
    assert operation(document, "predict")["requestBody"]["required"] is True  # prompt
    assert operation(document, "odd_default")["requestBody"]["required"] is False  # an empty body is {}


def test_nested_models_are_hoisted_into_components(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    settings = request_schema(document, "configure")["properties"]["settings"]
    assert settings == {"$ref": "#/components/schemas/Settings"}
    assert resolve(document, settings)["required"] == ["name", "inner"]
    assert resolve(document, schemas["Settings"]["properties"]["inner"])["properties"]["level"] == {
        "title": "Level",
        "type": "integer",
    }
    assert {"Settings", "Inner", "CortexError", "CortexRunFailure"} <= set(schemas)


def test_every_ref_resolves_and_no_local_defs_remain(document: dict[str, Any]) -> None:
    all_refs = set(refs(document))
    assert all_refs >= {"#/components/schemas/Settings", "#/components/schemas/CortexError"}
    for ref in all_refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"], ref
    assert "$defs" not in repr(document)


def test_rejections_and_failures_are_documented(document: dict[str, Any]) -> None:
    responses = operation(document, "predict")["responses"]
    assert {"200", "400", "404", "422", "429", "500", "504"} <= set(responses)
    for status in ("400", "404", "422", "429"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/CortexError"}, status
    for status in ("500", "504"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/CortexRunFailure"}, status
    error = document["components"]["schemas"]["CortexError"]
    assert error["properties"]["error"]["required"] == ["code", "message"]


def test_result_schema_follows_the_return_annotation(document: dict[str, Any]) -> None:
    envelope = operation(document, "predict")["responses"]["200"]["content"]["application/json"]["schema"]
    assert envelope["required"] == ["run_id", "run_time_ms", "result"]
    assert envelope["properties"]["result"] == {"type": "object", "additionalProperties": {"type": "integer"}}


def test_result_of_an_unannotated_function_is_open(document: dict[str, Any]) -> None:
    envelope = operation(document, "passthrough")["responses"]["200"]["content"]["application/json"]["schema"]
    assert envelope["properties"]["result"] == {}


@pytest.mark.parametrize("name", ["stream_words", "tokens"])
def test_generators_offer_an_event_stream_or_a_list(document: dict[str, Any], name: str) -> None:
    content = operation(document, name)["responses"]["200"]["content"]
    event = content["text/event-stream"]["schema"]  # each event, as OpenAPI 3.2's itemSchema
    assert set(event["properties"]) == {"event", "data", "id", "retry"}
    assert content["application/json"]["schema"]["properties"]["result"] == {"type": "array"}
    assert "text/event-stream" in operation(document, name)["description"]


def test_plain_functions_offer_only_json(document: dict[str, Any]) -> None:
    assert list(operation(document, "predict")["responses"]["200"]["content"]) == ["application/json"]


def test_summary_is_the_first_docstring_line(document: dict[str, Any]) -> None:
    predict = operation(document, "predict")
    assert predict["summary"] == "Score a prompt."
    assert predict["description"] == "Score a prompt.\n\nLonger explanation."
    assert operation(document, "configure")["summary"] == "Call configure()"
    assert operation(document, "configure")["description"] == ""


def test_app_without_functions_documents_only_the_runs_and_service_endpoints() -> None:
    empty = build_openapi(BASE, "empty", Registry(types.ModuleType("main"), {}, 0.0))
    assert list(empty["paths"]) == [
        f"{BASE}/runs",
        f"{BASE}/runs/{{run_id}}",
        f"{BASE}/runs/{{run_id}}/events",
        "/health",
        "/ready",
        "/openapi.json",
    ]
    assert list(OpenAPIV31SpecValidator(empty).iter_errors()) == []


def test_a_function_named_runs_keeps_its_post_beside_the_runs_list(app_dir: Path) -> None:
    (app_dir / "main.py").write_text("def runs(prompt: str):\n    return prompt\n")
    document = build_openapi(BASE, "runs-app", discover(app_dir))
    assert list(document["paths"][f"{BASE}/runs"]) == ["post", "get"]
    assert not any(path.startswith(f"{BASE}/runs/") and "{run_id}" not in path for path in document["paths"])


# Name clashes and hints without a JSON schema


def clash_registry(app_dir: Path) -> Registry:
    (app_dir / "shop.py").write_text(
        "from pydantic import BaseModel\n\nclass Item(BaseModel):\n    sku: str\n"
    )
    (app_dir / "main.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            import shop

            class Item(BaseModel):
                weight: float

            class Error(BaseModel):
                line: int

            def weigh(item: Item) -> float:
                return item.weight

            def sell(item: shop.Item) -> str:
                return item.sku

            def lint(errors: list[Error]) -> int:
                return len(errors)
            """
        )
    )
    return discover(app_dir)


def test_user_model_named_error_does_not_replace_the_error_schema(app_dir: Path) -> None:
    document = build_openapi(BASE, "shop", clash_registry(app_dir))
    rejection = operation(document, "weigh")["responses"]["422"]["content"]["application/json"]["schema"]
    assert "error" in resolve(document, rejection)["properties"]


def test_two_models_with_the_same_name_keep_their_own_schemas(app_dir: Path) -> None:
    document = build_openapi(BASE, "shop", clash_registry(app_dir))
    weigh = resolve(document, request_schema(document, "weigh")["properties"]["item"])
    sell = resolve(document, request_schema(document, "sell")["properties"]["item"])
    assert (list(weigh["properties"]), list(sell["properties"])) == (["weight"], ["sku"])


class Tokenizer:
    """A type pydantic accepts (arbitrary_types_allowed) but cannot describe as JSON schema."""


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return []


def test_hint_without_a_json_schema_is_documented_as_open() -> None:
    registry = Registry(types.ModuleType("main"), {"encode": build_spec("encode", encode)}, 0.0)
    document = build_openapi(BASE, "tok", registry)
    schema = request_schema(document, "encode")
    assert schema["properties"] == {"tokenizer": {}, "text": {"type": "string"}}
    assert schema["required"] == ["tokenizer", "text"]


def test_with_auth_every_path_but_the_open_ones_requires_a_bearer_token(app_dir: Path) -> None:
    (app_dir / "main.py").write_text(textwrap.dedent(MAIN))
    open_paths = {"/health", "/ready"}
    secured = build_openapi(BASE, "my-app", discover(app_dir), is_open=open_paths.__contains__)
    assert [error.message for error in OpenAPIV31SpecValidator(secured).iter_errors()] == []
    assert secured["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in secured["paths"].items():
        for method, op in item.items():
            if path in open_paths:
                assert "security" not in op and "401" not in op["responses"], (path, method)
            else:
                assert op["security"] == [{"bearerAuth": []}], (path, method)
                assert {"401", "403"} <= set(op["responses"]), (path, method)
    plain = build_openapi(BASE, "my-app", discover(app_dir))
    assert "securitySchemes" not in plain["components"]
    assert all("security" not in op for item in plain["paths"].values() for op in item.values())


@pytest.mark.parametrize("secured", [False, True])
def test_a_custom_runtime_document_forwards_any_path_and_keeps_the_runs(secured: bool) -> None:
    from cortex.openapi import build_proxy_openapi

    is_open = {"/health", "/ready"}.__contains__ if secured else None
    document = build_proxy_openapi(BASE, "custom", is_open)
    assert [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()] == []
    forwarded = document["paths"][f"{BASE}/{{path}}"]
    assert set(forwarded) == {"get", "post", "put", "patch", "delete"}
    assert "202" in forwarded["post"]["responses"] and "202" not in forwarded["get"]["responses"]
    assert f"{BASE}/runs/{{run_id}}" in document["paths"]
    assert ("security" in forwarded["get"]) == secured
