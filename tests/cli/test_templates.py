"""Every template under templates/ serves and answers once its name is filled in.

Templates that need the ML stack (vLLM, sentence-transformers) are served by tests/vllm in .venv-ml
(`make test-ml`); the rest are served here, in the light venv. A new template must be listed in one.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.conftest import REPO

LIGHT_TEMPLATES = ["basic"]
ML_TEMPLATES = {"vllm": "tests/vllm/test_chat.py", "embeddings": "tests/vllm/test_embeddings.py"}


def test_every_template_is_tested_somewhere():
    templates = {p.name for p in (REPO / "templates").iterdir() if p.is_dir()}
    assert templates == {*LIGHT_TEMPLATES, *ML_TEMPLATES}, (
        "add the template to LIGHT_TEMPLATES (served below) or ML_TEMPLATES (with its tests/vllm module)"
    )
    assert all((REPO / module).is_file() for module in ML_TEMPLATES.values())


@pytest.mark.parametrize("template", LIGHT_TEMPLATES)
def test_template_serves(cortex_process, tmp_path, template):
    app = tmp_path / "my-app"
    shutil.copytree(REPO / "templates" / template, app)
    toml = app / "cerebrium.toml"
    toml.write_text(toml.read_text().replace("{name}", "my-app"))
    server = cortex_process("serve", str(app), "--port", "0")
    url = server.wait_ready()
    response = httpx.post(f"{url}/v4/p-local/my-app/run", json={"prompt": "hi"})
    assert response.status_code == 200
    assert response.json()["result"] == {"my_result": "hi"}
