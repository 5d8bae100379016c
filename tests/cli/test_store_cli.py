"""`cortex serve` with a job store it cannot use: the reason and the fix, no traceback, exit non-zero."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tests.conftest import APPS, run_cortex
from tests.custom_apps import free_port
from tests.redis_server import RedisServer


def _serve(app: Path, store: str, **env: str) -> tuple[int, str]:
    done = run_cortex("serve", str(app), "--port", "0", env={"CORTEX_STORE": store, **env}, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_strict_durability_refuses_a_redis_that_could_lose_runs(
    start_redis: Callable[..., RedisServer], tmp_path: Path
) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "echo", app)
    redis = start_redis(["--appendonly", "no"])
    code, output = _serve(app, redis.url, CORTEX_STRICT_DURABILITY="1")
    assert code != 0
    assert "appendonly" in output and "CORTEX_STRICT_DURABILITY" in output
    assert "Traceback" not in output


def test_an_unreachable_store_is_named_and_the_server_exits(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "echo", app)
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    code, output = _serve(app, url)
    assert code != 0
    assert "cannot use Redis" in output and "Connection refused" in output
    assert "hunter2" not in output  # the password is masked
    assert "Traceback" not in output
