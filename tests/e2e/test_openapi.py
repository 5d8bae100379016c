"""GET /openapi.json describes every function of the served app."""

from __future__ import annotations

from tests.conftest import APPS, serving


def test_openapi_lists_every_function_with_its_request_schema():
    with serving(APPS / "echo") as served, served.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "echo-app"
    assert {path for path in document["paths"] if "/runs" not in path} == {
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
