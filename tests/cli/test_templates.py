"""Every template under templates/ serves and answers once its name is filled in."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.conftest import REPO

TEMPLATES = sorted(p for p in (REPO / "templates").iterdir() if p.is_dir())


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_serves(cortex_process, tmp_path, template):
    app = tmp_path / "my-app"
    shutil.copytree(template, app)
    toml = app / "cerebrium.toml"
    toml.write_text(toml.read_text().replace("{name}", "my-app"))
    server = cortex_process("serve", str(app), "--port", "0")
    url = server.wait_ready()
    response = httpx.post(f"{url}/v4/p-local/my-app/run", json={"prompt": "hi"})
    assert response.status_code == 200
    assert response.json()["result"] == {"my_result": "hi"}
