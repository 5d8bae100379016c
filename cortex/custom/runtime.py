"""A custom runtime's moving parts, wired: the supervised child, the upstream, the routes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cortex.allocator import keep_large_buffers_on_heap
from cortex.config import CustomRuntimeConfig
from cortex.custom.fast_lane import ProxyLane
from cortex.custom.proxy import Upstream
from cortex.custom.routes import ProxyRoutes
from cortex.custom.supervisor import Supervisor
from cortex.errors import CortexError, ServeError
from cortex.routes import FunctionRoutes
from cortex.state import ServingState

logger = logging.getLogger("cortex.proxy")


@dataclass
class CustomRuntime:
    supervisor: Supervisor
    upstream: Upstream
    routes: ProxyRoutes
    lane: ProxyLane  # the common calls, answered below ASGI (see fast_lane.py)

    async def start(self, on_ready: Callable[[], None], on_failed: Callable[[CortexError], None]) -> None:
        """Spawn the app's server and wait for its first readiness; a failure stops cortex."""
        try:
            await self.supervisor.start()
            await self.supervisor.wait_ready()
        except CortexError as exc:
            on_failed(exc)
            return
        on_ready()

    async def stop(self) -> None:
        await self.upstream.aclose()
        await self.supervisor.stop()


def build_custom_runtime(state: ServingState, functions: FunctionRoutes) -> CustomRuntime:
    custom = state.config.runtime.custom
    assert custom is not None
    keep_large_buffers_on_heap()  # this process now relays the app's downloads
    environment = {
        "PORT": str(custom.port),
        "APP_NAME": state.app_name,
        "PROJECT_ID": state.project_id,
        # `python`, `uvicorn`, ... of cortex's own environment first, activated or not: the app's
        # packages are installed beside cortex (as in the image `cortex build` makes).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
    }
    supervisor = Supervisor(
        state.app_dir,
        custom,
        environment,
        init_timeout=float(state.config.deployment.deployment_initialization_timeout),
        grace_seconds=state.grace_seconds,
    )
    upstream = Upstream(custom.port, state.grace_seconds, state.settings.max_body_bytes)
    state.upstream_ready = lambda: supervisor.ready
    routes = ProxyRoutes(state, functions, upstream)
    return CustomRuntime(supervisor, upstream, routes, ProxyLane(state, upstream))


def dockerfile_notice(custom: CustomRuntimeConfig) -> str | None:
    """What `cortex serve` says of a `dockerfile_path` app; ServeError when it cannot run it."""
    if not custom.dockerfile_path:
        return None
    build = (
        f"dockerfile_path = {custom.dockerfile_path!r}: this app is built as an image from its own "
        "Dockerfile. Build it with `cortex build` (or `docker build -f "
        f"{custom.dockerfile_path} .`) and run it with `docker run -p {custom.port}:{custom.port} <image>`."
    )
    if custom.entrypoint is None:
        raise ServeError(
            f"{build} To run it here without Docker, add the command that starts its server: "
            f'[cerebrium.runtime.custom] entrypoint = ["python", "-m", "uvicorn", "main:app", '
            f'"--port", "{custom.port}"].'
        )
    return f"{build} `cortex serve` runs its entrypoint directly instead."
