"""Real vLLM and sentence-transformers behind `cortex serve`; `make test-ml` runs them in .venv-ml.

The slow modules skip themselves when their engine is not installed (the light .venv), so the default
suite collects them without errors. One server at a time: each is module-scoped, and vLLM starts its
engine (~30 s on 2 cores with the flags below) when main.py is imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, CortexProcess

TEMPLATES = REPO / "templates"
ENGINE_START_TIMEOUT = 240  # seconds; ~30 s is usual, a busy CI machine is slower
SERVED_LLM_NAME = "tiny-llama"

# What MODELS.md prescribes for vLLM on these machines: offline, loopback only, 1 GiB of KV cache,
# and the fastest start (eager, one process for the worker).
ML_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
LLM_ENGINE_ARGS = {
    "dtype": "bfloat16",
    "max_model_len": 4096,  # long enough that an ignore_eos stream is still running when we cut it
    "enforce_eager": True,
    "distributed_executor_backend": "uni",
    # A random model loves whitespace tokens; xgrammar would let it pad JSON until max_tokens.
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
}

# Appended to the test copy of templates/vllm so cortex.vllm's text completions are served too.
COMPLETE_FUNCTION = """

async def complete(prompt: str, run_id: str = "", stream: bool = True, max_tokens: int = 16,
                   seed: int | None = None, temperature: float = 1.0, stream_options: dict | None = None):
    async for chunk in llm.completion(prompt, run_id=run_id, stream=stream, max_tokens=max_tokens,
                                      seed=seed, temperature=temperature, stream_options=stream_options):
        yield chunk
"""


def skip_unless_installed(module: str) -> None:
    """Skip the calling test module (at collection) when `module` cannot be imported here."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in this venv; run `make test-ml`", allow_module_level=True)


def has_openai_routes() -> bool:
    """The OpenAI-compatible routes (.../{fn}/chat/completions, ...) are part of this build."""
    return importlib.util.find_spec("cortex.openai_compat.routes") is not None


@dataclass
class AppServer:
    process: CortexProcess
    url: str  # http://127.0.0.1:PORT
    base: str  # url + /v4/p-local/{app}

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.base, **kwargs)


def copy_template(name: str, target: Path, app: str) -> Path:
    shutil.copytree(TEMPLATES / name, target)
    toml = target / "cerebrium.toml"
    toml.write_text(toml.read_text().replace("{name}", app))
    return target


def serve_app(app_dir: Path, env: dict[str, str]) -> Iterator[AppServer]:
    """`cortex serve app_dir` in its own session until the generator is closed, then the group is stopped."""
    process = CortexProcess(["serve", str(app_dir), "--port", "0"], env={**ML_ENV, **env})
    started = time.monotonic()
    try:
        url = process.wait_ready(timeout=ENGINE_START_TIMEOUT)
        print(f"\n{app_dir.name}: ready in {time.monotonic() - started:.1f} s")
        yield AppServer(process, url, f"{url}/v4/p-local/{app_dir.name}")
    finally:
        process.stop(signal.SIGTERM, timeout=30)  # SIGTERM lets vLLM stop its EngineCore process too
        log = app_dir.parent / f"{app_dir.name}.log"
        log.write_text(process.output)
        print(f"\n{app_dir.name}: server log in {log}")


def sse_chunks(response: httpx.Response) -> list[Any]:
    """The JSON `data:` payloads of an SSE response, in order ([DONE] left out)."""
    return [
        json.loads(line[len("data: ") :])
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@contextmanager
def openai_client(server: AppServer, function: str = "run") -> Iterator[Any]:
    """The official client on `function`'s OpenAI routes; no retries, so a failure shows at once."""
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=f"{server.base}/{function}", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama built in a subprocess (torch stays out of the test process)."""
    target = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run(
        [sys.executable, "-m", "tests.vllm.tiny_llama", str(target)],
        cwd=REPO,
        env={**os.environ, **ML_ENV},
        check=True,
        capture_output=True,
        timeout=180,
    )
    return target


@pytest.fixture(scope="module")
def llm_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """templates/vllm serving the tiny Llama as "tiny-llama", plus a `complete` function."""
    scratch = tmp_path_factory.mktemp("llm")
    app = copy_template("vllm", scratch / "llm-app", "llm-app")
    (app / "main.py").write_text((app / "main.py").read_text() + COMPLETE_FUNCTION)
    rpc = scratch / "rpc"
    rpc.mkdir()
    env = {
        "LLM_MODEL": str(tiny_llama),
        "LLM_SERVED_NAME": SERVED_LLM_NAME,
        "LLM_ENGINE_ARGS": json.dumps(LLM_ENGINE_ARGS),
        "VLLM_RPC_BASE_PATH": str(rpc),
    }
    yield from serve_app(app, env)


@pytest.fixture(scope="module")
def embeddings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """templates/embeddings with no EMBEDDING_MODEL: the offline all-MiniLM-L6-v2 package."""
    app = copy_template(
        "embeddings", tmp_path_factory.mktemp("embeddings") / "embeddings-app", "embeddings-app"
    )
    yield from serve_app(app, {"EMBEDDING_DEVICE": "cpu"})
