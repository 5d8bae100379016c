"""POST /v4/{project}/{app}/{function}: arguments in, envelope out, every rejection as JSON."""

from __future__ import annotations

import uuid

import httpx
import pytest


@pytest.fixture(scope="module")
def echo():
    from tests.conftest import APPS, serving

    with serving(APPS / "echo") as served:
        yield served


def call(served, function: str, **kwargs) -> httpx.Response:
    with served.client() as client:
        return client.post(f"{served.base}/{function}", **kwargs)


def test_call_returns_envelope_with_run_id_header(echo):
    response = call(echo, "predict", json={"prompt": "hi", "n": 2})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"run_id", "run_time_ms", "result"}
    assert body["result"] == {"echo": "hihi"}
    assert response.headers["x-request-id"] == body["run_id"]
    assert uuid.UUID(body["run_id"]).version == 4
    assert isinstance(body["run_time_ms"], float) and body["run_time_ms"] >= 0


def test_each_call_gets_a_new_run_id(echo):
    ids = {call(echo, "no_args").json()["run_id"] for _ in range(5)}
    assert len(ids) == 5


def test_async_function_is_awaited_and_values_are_coerced(echo):
    response = call(echo, "apredict", json={"x": "21"})
    assert response.json()["result"] == 42.0


def test_run_id_is_injected_when_declared(echo):
    body = call(echo, "with_run_id", json={"value": "v"}).json()
    assert body["result"] == {"value": "v", "run_id": body["run_id"]}


def test_run_id_is_injected_in_any_position(echo):
    body = call(echo, "run_id_first", json={"value": 7}).json()
    assert body["result"] == [body["run_id"], 7]


def test_run_id_cannot_be_sent_by_the_caller(echo):
    response = call(echo, "with_run_id", json={"value": "v", "run_id": "mine"})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "with_run_id(): unexpected parameter 'run_id' (with_run_id() accepts: value)."
    )


def test_pydantic_model_argument_and_dataclass_result(echo):
    response = call(echo, "buy", json={"item": {"name": "tea", "price": "2.5"}, "quantity": 3})
    assert response.status_code == 200
    assert response.json()["result"] == {"name": "tea", "total": 7.5}


def test_pydantic_model_result_is_serialised(echo):
    assert call(echo, "model_out", json={"name": "x"}).json()["result"] == {
        "name": "x",
        "price": 1.5,
        "tags": [],
    }


def test_status_code_in_result_sets_http_status(echo):
    response = call(echo, "created", json={"name": "n"})
    assert response.status_code == 201
    assert response.json()["result"] == {"status_code": 201, "name": "n"}


def test_kwargs_function_accepts_unknown_keys(echo):
    response = call(echo, "anything", json={"a": 1, "b": [2], "c": "x"})
    assert response.json()["result"] == {"a": 1, "extra": {"b": [2], "c": "x"}}


def test_empty_body_means_no_arguments(echo):
    assert call(echo, "no_args", content=b"").json()["result"] == "pong"


def test_untyped_parameters_accept_any_json(echo):
    assert call(echo, "untyped", json={"x": {"deep": [1]}}).json()["result"] == [{"deep": [1]}, 3]


def test_wrong_type_is_422_naming_parameter_and_expectation(echo):
    response = call(echo, "predict", json={"prompt": 42})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"] == "predict(): parameter 'prompt' expects str, got 42 (int)."
    assert error["details"][0]["parameter"] == "prompt"
    assert error["details"][0]["expected"] == "str"
    assert response.headers["x-request-id"]


def test_every_problem_is_reported_at_once(echo):
    response = call(echo, "predict", json={"n": "many", "colour": "red"})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "predict(): missing required parameter 'prompt' (str); "
        "parameter 'n' expects int, got 'many' (str); "
        "unexpected parameter 'colour' (predict() accepts: prompt, n)."
    )
    assert [d["parameter"] for d in response.json()["error"]["details"]] == [
        "prompt",
        "n",
        "colour",
    ]


def test_nested_model_error_names_the_path(echo):
    response = call(echo, "buy", json={"item": {"name": "tea", "price": "cheap"}})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        "buy(): parameter 'item.price': Input should be a valid number, "
        "unable to parse string as a number (got 'cheap' (str))."
    )


def test_invalid_json_is_400(echo):
    response = call(echo, "predict", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("The request body is not valid JSON: ")


@pytest.mark.parametrize(
    ("body", "got"),
    [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"3", "an integer"), (b"null", "null")],
)
def test_json_that_is_not_an_object_is_422(echo, body, got):
    response = call(echo, "predict", content=body)
    assert response.status_code == 422
    assert response.json()["error"]["message"] == (
        f"predict(): the request body must be a JSON object of parameters, got {got}."
    )


def test_unknown_function_is_404_listing_public_ones(echo):
    response = call(echo, "predcit", json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "No function 'predcit' in main.py. Public functions: predict, apredict, with_run_id, "
        "run_id_first, buy, model_out, created, anything, no_args, untyped."
    )


@pytest.mark.parametrize("name", ["_helper", "join", "Item", "Receipt", "BaseModel"])
def test_private_imported_and_class_names_are_not_endpoints(echo, name):
    assert call(echo, name, json={}).status_code == 404


def test_other_project_is_404(echo):
    with echo.client() as client:
        response = client.post("/v4/p-other/echo-app/predict", json={"prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "Unknown project 'p-other': this server serves project 'p-local' at /v4/p-local/echo-app/<function>."
    )


def test_other_app_is_404(echo):
    with echo.client() as client:
        response = client.post("/v4/p-local/someone-else/predict", json={"prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "Unknown app 'someone-else': this server serves app 'echo-app' at /v4/p-local/echo-app/<function>."
    )


def test_get_on_a_function_is_405(echo):
    with echo.client() as client:
        response = client.get(f"{echo.base}/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["message"] == "Use POST to call predict(); got GET."


def test_unknown_path_outside_v4_is_json_404(echo):
    with echo.client() as client:
        response = client.get("/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "No route GET /nothing/here."}}


def test_health_and_ready(echo):
    with echo.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert "predict" in ready.json()["functions"]


def test_responses_outside_v4_carry_a_request_id_too(echo):
    with echo.client() as client:
        first = client.get("/health").headers["x-request-id"]
        second = client.get("/nothing").headers["x-request-id"]
    assert uuid.UUID(first) != uuid.UUID(second)
