"""What one running server knows: its app, its limits, and whether main.py is loaded yet."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cortex.auth import Authenticator, auth_enabled, verifier_from_settings
from cortex.concurrency import AdmissionGate, ThreadRunner
from cortex.config import CerebriumConfig, Settings
from cortex.discovery import FunctionSpec, Registry
from cortex.jobs.models import Outcome, RunRequest
from cortex.jobs.ssrf import check_webhook_url_async
from cortex.jobs.store import JobStore
from cortex.jobs.worker import RunWorker
from cortex.metrics import Metrics
from cortex.run_routes import CallOptions, RunRoutes, new_run_request

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Threads beyond replica_concurrency: a call past its deadline keeps its thread until the user
# code returns (Python cannot kill a thread), and new calls should not queue behind it.
SPARE_THREADS = 8

NOT_READY_MESSAGE = "The app is still loading (main.py is being imported). Retry shortly."


@dataclass
class JobsRuntime:
    """The durable-run machinery, opened by the app's lifespan."""

    store: JobStore
    worker: RunWorker
    runs: RunRoutes
    webhook_allow: tuple[IPNetwork, ...]
    wake_dispatcher: Callable[[], None]

    async def new_run(
        self, spec: FunctionSpec, body: bytes, run_id: str, options: CallOptions, shape: str | None = None
    ) -> RunRequest:
        """The run to record for a call with options; a webhook URL must pass the SSRF guard."""
        if options.webhook_url is not None:
            await check_webhook_url_async(options.webhook_url, self.webhook_allow)
        return new_run_request(spec, body, run_id, options, time.time(), shape)

    async def record_finished(self, request: RunRequest, outcome: Outcome) -> None:
        """A sync call that asked for a webhook: stored terminal, delivered by the dispatcher."""
        await self.store.record_finished(request, outcome, time.time())
        self.wake_dispatcher()


@dataclass
class ServingState:
    app_dir: Path
    config: CerebriumConfig
    settings: Settings
    registry: Registry | None = None  # None until main.py is imported (see /ready)
    jobs: JobsRuntime | None = None  # None until the job store is open
    # A custom runtime: whether the app's own server passes its readiness check (set by app.py).
    upstream_ready: Callable[[], bool] | None = None
    gate: AdmissionGate = field(init=False)
    threads: ThreadRunner = field(init=False)
    authenticator: Authenticator | None = field(init=False)  # None: auth is off
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        # ConfigError here (auth on without a key) stops the server before it listens.
        self.authenticator = (
            Authenticator(verifier_from_settings(self.settings), self.settings.public_metadata)
            if auth_enabled(self.settings, self.config)
            else None
        )
        concurrency = self.config.scaling.replica_concurrency
        self.gate = AdmissionGate(concurrency, self.settings.max_queue)
        self.threads = ThreadRunner(concurrency + SPARE_THREADS)
        self.metrics = Metrics(self.gate)

    @property
    def is_ready(self) -> bool:
        """main.py is imported, or the custom runtime's server is ready: calls can be served."""
        if self.upstream_ready is not None:
            return self.upstream_ready()
        return self.registry is not None

    @property
    def is_custom_runtime(self) -> bool:
        """[cerebrium.runtime.custom]: the app's own server is proxied instead of main.py served."""
        return self.config.runtime.custom is not None

    @property
    def project_id(self) -> str:
        return self.settings.project_id

    @property
    def app_name(self) -> str:
        return self.config.deployment.name

    @property
    def grace_seconds(self) -> float:
        return float(self.config.scaling.response_grace_period)

    @property
    def base_path(self) -> str:
        return f"/v4/{self.project_id}/{self.app_name}"
