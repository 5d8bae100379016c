"""The reliability campaign's fast variants (10x smaller, fixed seed) as part of the default suite:
one test per scenario, each a real `cortex serve` (and redis-server) driven by its script."""

from __future__ import annotations

import importlib

import pytest

from tests.redis_server import redis_server_path
from tests.reliability.__main__ import SCENARIOS
from tests.reliability.harness import DEFAULT_SEED, execute

pytestmark = pytest.mark.soak_fast


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", SCENARIOS)
def test_fast_variant_passes(name: str) -> None:
    if name == "soak_kill_redis" and redis_server_path() is None:
        pytest.skip("SOAK SKIPPED: redis-server is not installed; `make system-packages` installs it.")
    result = execute(importlib.import_module(f"tests.reliability.{name}").run, "fast", DEFAULT_SEED)
    assert result.status == "PASS", result.line()
