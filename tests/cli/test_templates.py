"""`cortex init` and every template under templates/: scaffolded, served, called, README commands run.

Templates that need the ML stack (vLLM, sentence-transformers) are called by tests/vllm in .venv-ml
(`make test-ml`); here they are scaffolded and started, and must either serve or say clearly what is
missing. A new template must be listed in LIGHT_TEMPLATES or ML_TEMPLATES.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, run_cortex
from tests.custom_apps import free_port

APP = "my-app"
LIGHT_TEMPLATES = {
    "basic": ("run", {"prompt": "hi"}, {"my_result": "hi"}),
    "streaming": ("run", {"prompt": "a b", "delay": 0}, [{"token": "a"}, {"token": "b"}]),
    "webhook": ("run", {"items": ["x"], "seconds_per_item": 0}, {"processed": ["X"]}),
}
ML_TEMPLATES = {"vllm": "tests/vllm/test_chat.py", "embeddings": "tests/vllm/test_embeddings.py"}
CUSTOM_TEMPLATES = ["asgi"]


def init(tmp_path: Path, template: str) -> Path:
    result = run_cortex("init", APP, "--template", template, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Created {APP}/ (README.md, cerebrium.toml, main.py).")
    app = tmp_path / APP
    assert f'name = "{APP}"' in (app / "cerebrium.toml").read_text()
    assert "{name}" not in (app / "README.md").read_text()
    return app


def readme_block(app: Path, language: str) -> str:
    """The first ```language block of the scaffolded README that calls the app."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (app / "README.md").read_text(), re.S)
    return next(block for block in blocks if "127.0.0.1:8000" in block)


def run_readme_curl(app: Path, url: str) -> str:
    line = next(line for line in readme_block(app, "sh").splitlines() if line.startswith("curl "))
    command = shlex.split(line.replace("http://127.0.0.1:8000", url))
    result = subprocess.run(
        [*command, "--silent", "--show-error", "--fail"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_readme_python(app: Path, url: str) -> str:
    code = readme_block(app, "python").replace("http://127.0.0.1:8000", url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_template_is_tested_somewhere():
    templates = {p.name for p in (REPO / "templates").iterdir() if p.is_dir()}
    assert templates == {*LIGHT_TEMPLATES, *ML_TEMPLATES, *CUSTOM_TEMPLATES}, (
        "add the template to LIGHT_TEMPLATES, CUSTOM_TEMPLATES or ML_TEMPLATES (with its tests/vllm module)"
    )
    assert all((REPO / module).is_file() for module in ML_TEMPLATES.values())


def test_init_list_describes_every_template():
    result = run_cortex("init", "--list")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert set(lines) == {*LIGHT_TEMPLATES, *ML_TEMPLATES, *CUSTOM_TEMPLATES}
    assert lines["basic"].startswith("The smallest app, as `cerebrium init` makes it")
    assert all(len(description) > 20 for description in lines.values())


def test_init_refuses_a_bad_name_an_unknown_template_and_a_non_empty_folder(tmp_path):
    bad = run_cortex("init", "my app", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "Error: 'my app' cannot be an app name: it must start with a letter or digit and contain only "
        "letters, digits, '-', '_' and '.', because it is part of the app's URL. Try e.g. my-app."
    )
    unknown = run_cortex("init", APP, "--template", "nope", cwd=tmp_path)
    assert unknown.stderr.strip() == (
        "Error: No template 'nope'. Templates: asgi, basic, embeddings, streaming, vllm, webhook "
        "(cortex init --list describes them)."
    )
    (tmp_path / APP).mkdir()
    (tmp_path / APP / "notes.txt").write_text("mine")
    taken = run_cortex("init", APP, cwd=tmp_path)
    assert taken.returncode == 1
    assert taken.stderr.strip() == (
        f"Error: {tmp_path / APP} already exists and is not empty. Choose another name, or remove it first."
    )
    assert sorted(p.name for p in (tmp_path / APP).iterdir()) == ["notes.txt"]
    assert not (tmp_path / "my app").exists()


def test_init_into_an_empty_folder_and_without_a_name(tmp_path):
    (tmp_path / APP).mkdir()
    init(tmp_path, "basic")
    missing = run_cortex("init", cwd=tmp_path)
    assert missing.returncode == 1
    assert "Name the app: cortex init NAME" in missing.stderr


@pytest.mark.parametrize("template", sorted(LIGHT_TEMPLATES))
def test_template_serves_and_its_readme_calls_work(cortex_process, tmp_path, template):
    function, arguments, expected = LIGHT_TEMPLATES[template]
    app = init(tmp_path, template)
    url = cortex_process("serve", str(app), "--port", "0").wait_ready()
    response = httpx.post(f"{url}/v4/p-local/{APP}/{function}", json=arguments, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == expected
    assert run_readme_curl(app, url)
    assert run_readme_python(app, url)


def test_basic_readme_answers_as_documented(cortex_process, tmp_path):
    app = init(tmp_path, "basic")
    url = cortex_process("serve", str(app), "--port", "0").wait_ready()
    assert json.loads(run_readme_curl(app, url))["result"] == {"my_result": "hello"}
    assert run_readme_python(app, url).strip() == "{'my_result': 'hello'}"


def test_streaming_readme_streams_events(cortex_process, tmp_path):
    app = init(tmp_path, "streaming")
    url = cortex_process("serve", str(app), "--port", "0").wait_ready()
    events = [line for line in run_readme_curl(app, url).splitlines() if line.startswith("data: ")]
    assert [json.loads(e[len("data: ") :])["token"] for e in events] == ["the", "quick", "brown", "fox"]
    assert run_readme_python(app, url).splitlines()[0] == "{'token': 'the'}"


def test_webhook_template_runs_async_polls_and_calls_back(cortex_process, tmp_path, webhook_receiver):
    app = init(tmp_path, "webhook")
    env = {"CORTEX_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8"}
    url = cortex_process("serve", str(app), "--port", "0", env=env).wait_ready()
    submitted = json.loads(run_readme_curl(app, url))
    assert submitted["status"] == "pending"
    assert run_readme_python(app, url).strip() == "{'processed': ['A', 'B']}"
    hooked = httpx.post(
        f"{url}/v4/p-local/{APP}/run",
        params={"async": "true", "webhookEndpoint": webhook_receiver.url},
        json={"items": ["q"], "seconds_per_item": 0},
    )
    assert hooked.status_code == 202
    delivered = webhook_receiver.wait_for(1)[0].json()
    assert (delivered["status"], delivered["result"]) == ("completed", {"processed": ["Q"]})


def test_asgi_template_is_proxied_as_a_custom_runtime(cortex_process, tmp_path):
    app = init(tmp_path, "asgi")
    toml = app / "cerebrium.toml"
    port = str(free_port())  # no fixed ports in tests, and loopback only
    toml.write_text(toml.read_text().replace("8192", port).replace("0.0.0.0", "127.0.0.1"))
    url = cortex_process("serve", str(app), "--port", "0").wait_ready()
    assert json.loads(run_readme_curl(app, url)) == {"message": "hello, Ada"}
    assert run_readme_python(app, url).strip() == "{'message': 'hello, Ada'}"


@pytest.mark.parametrize("template", sorted(ML_TEMPLATES))
def test_ml_template_serves_or_says_what_is_missing(cortex_process, tmp_path, template):
    app = init(tmp_path, template)
    server = cortex_process("serve", str(app), "--port", "0", env={"HF_HUB_OFFLINE": "1"})
    server.url()
    line = server.wait_for_line(r"^Ready\.|failed to import|is not installed", timeout=60)
    if line.group(0) != "Ready.":
        assert re.search(r"(vllm|sentence_transformers|vLLM)", server.output), server.output
        assert re.search(r"pip install|\[cerebrium\.dependencies\.pip\]", server.output), server.output


def test_the_package_ships_the_top_level_templates():
    # cortex/templates is a symlink in the checkout, so a wheel holds real copies of templates/.
    assert (REPO / "cortex" / "templates").resolve() == (REPO / "templates").resolve()
