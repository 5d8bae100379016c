"""Run the custom runtime's entrypoint as a child process: start, probe, restart, stop.

Interface used by the rest of cortex (the proxy and app.py); the implementation lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from cortex.config import CustomRuntimeConfig
from cortex.errors import CortexError


class CustomRuntimeError(CortexError):
    """The entrypoint cannot be started, exited at start, or never opened its port."""


class Supervisor:
    """One child process (in its own process group) serving the app on 127.0.0.1:`port`."""

    def __init__(
        self,
        app_dir: Path,
        runtime: CustomRuntimeConfig,
        env: Mapping[str, str],  # added to os.environ for the child (PORT, APP_NAME, PROJECT_ID, ...)
        init_timeout: float,  # deployment_initialization_timeout
        grace_seconds: float,  # response_grace_period: how long SIGTERM waits before SIGKILL
        log_line: Callable[[str], None] | None = None,  # each line the child prints
    ) -> None:
        raise NotImplementedError

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """True once the readiness check passed since the last (re)start, False otherwise."""
        raise NotImplementedError

    async def start(self) -> None:
        """Spawn the child; CustomRuntimeError at once when the entrypoint cannot be found."""
        raise NotImplementedError

    async def wait_ready(self) -> None:
        """Until the first readiness check passes; CustomRuntimeError when the child exits first
        (with its last log lines) or does not open `port` within `init_timeout` (naming the
        ports it opened instead, when it did). Afterwards the supervisor restarts a child that
        dies or fails its health check, with backoff, and logs why."""
        raise NotImplementedError

    async def stop(self) -> None:
        """SIGTERM to the group, up to `grace_seconds` for it to exit, then SIGKILL."""
        raise NotImplementedError
