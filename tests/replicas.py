"""Several `cortex serve` replicas of one app sharing one run store, each a real process.

    with running_replicas(2, store_url, env) as (a, b):
        a.base   # http://127.0.0.1:PORT/v4/p-local/replicas
        a.kill9()

They start side by side (each imports main.py while the others do) and are waited for in turn.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import APPS, TEST_WEBHOOK_SECRET, CortexProcess

APP = APPS / "replicas"
LEASE_SECONDS = "1"  # a killed replica's runs are claimed again within a second or two

# Short lease and webhook retries, signed with the tests' secret, to the loopback receiver.
REPLICA_ENV = {
    "CORTEX_RUN_LEASE_SECONDS": LEASE_SECONDS,
    "CORTEX_MAX_ATTEMPTS": "10",
    "CORTEX_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
    "CORTEX_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
    "CORTEX_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,1,1,1,1,1,1,1",
}


@dataclass
class Replica:
    process: CortexProcess
    url: str

    @property
    def base(self) -> str:
        return f"{self.url}/v4/p-local/{APP.name}"

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(**kwargs)

    def get(self, path: str) -> httpx.Response:
        with self.client() as client:
            return client.get(f"{self.base}{path}")

    def kill9(self) -> None:
        """SIGKILL to the replica's process group: no drain, no goodbye."""
        assert self.process.stop(signal.SIGKILL) == -signal.SIGKILL


def start_replica(
    store: str, env: dict[str, str] | None = None, *args: str, app: Path = APP
) -> CortexProcess:
    command = ["serve", str(app), "--port", "0", "--store", store, *args]
    return CortexProcess(command, {**REPLICA_ENV, **(env or {})})


@contextmanager
def running_replicas(
    count: int, store: str, env: dict[str, str] | None = None, *args: str, app: Path = APP
) -> Iterator[list[Replica]]:
    """`count` replicas on `store`, stopped (SIGKILL: the tests own nothing they must drain) after."""
    with ExitStack() as stack:
        processes = [start_replica(store, env, *args, app=app) for _ in range(count)]
        for process in processes:
            stack.callback(process.stop, signal.SIGKILL)
        yield [Replica(process, process.wait_ready()) for process in processes]


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
