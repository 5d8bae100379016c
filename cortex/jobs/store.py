"""The JobStore interface every store implements (SQLite, Redis), and choosing one by URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from cortex.errors import StoreError
from cortex.jobs.models import Delivery, Outcome, Run, RunRequest, RunStatus


class JobStore(Protocol):
    """Durable runs, their stream events and the webhook outbox, of one app.

    Every method is a coroutine; an implementation keeps blocking I/O off the event loop.
    Times are UNIX seconds passed in by the caller (so tests can set the clock).

    Namespaces: a store is built for one namespace, `"{project_id}/{app_name}"`, and several
    stores (processes, projects, apps) may share one backing file or server. Everything a store
    does is scoped to its namespace: a run of another namespace is, to every method, exactly an
    unknown run (`get` None, `cancel` (None, None), `heartbeat`/`append_events` False, `finish`
    None, `events_after` [], never listed), so callers cannot even tell that it exists. `claim`
    and `recover` take only this namespace's runs; idempotency keys and the `max_pending` cap are
    per namespace; `claim_deliveries` and `record_delivery` see only this namespace's webhooks
    (each app signs with its own secret). Run ids are unique across namespaces (uuid4s).
    `sweep_expired` is the one exception allowed (see there).
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, request: RunRequest, max_pending: int) -> tuple[Run, bool]:
        """Commit a new pending run of this namespace; (run, True) once it is durable.

        With an idempotency key seen before in this namespace: (that run, False) when the body
        hash matches, IdempotencyConflictError when it does not (the same key in another
        namespace is another run). OverloadedError when `max_pending` runs of this namespace are
        already pending.
        """
        ...

    async def get(self, run_id: str) -> Run | None:
        """The run, or None when it is unknown: never submitted, swept, or of another namespace."""
        ...

    async def list_runs(
        self, status: RunStatus | None, function: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        """This namespace's runs, newest first; the second value is the cursor of the next page,
        None at the end."""
        ...

    async def count_runs(self) -> dict[RunStatus, int]:
        """How many of this namespace's runs are in each status (absent: none), for /metrics."""
        ...

    async def claim(self, now: float, lease_seconds: float) -> Run | None:
        """The oldest pending run of this namespace, now processing under a lease, with its
        attempt number + 1. Never a run of another namespace, however old."""
        ...

    async def heartbeat(self, run_id: str, attempt: int, lease_until: float) -> bool:
        """Extend the lease; False when the attempt is no longer current (cancelled, re-queued)."""
        ...

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, now: float) -> Run | None:
        """Record the outcome of the current attempt of a processing run, and in the same
        transaction queue its webhook delivery. None (nothing written) when the run is already
        terminal or the attempt is stale."""
        ...

    async def record_finished(self, request: RunRequest, outcome: Outcome, now: float) -> Run:
        """A run that already ran elsewhere (a sync call with a webhook): stored terminal, its
        webhook queued, in one transaction."""
        ...

    async def cancel(self, run_id: str, now: float) -> tuple[Run | None, RunStatus | None]:
        """Cancel a pending or processing run (its webhook queued in the same transaction).

        Returns (run after the call, status before it); (None, None) for an unknown run. A
        terminal run is returned unchanged.
        """
        ...

    async def recover(self, now: float, max_attempts: int) -> tuple[int, int]:
        """Processing runs of this namespace whose lease ran out: back to pending, or failed with
        error type `Interrupted` once `max_attempts` attempts were made. Returns (requeued, failed).
        Another namespace's runs are its own servers' to recover."""
        ...

    async def append_events(self, run_id: str, attempt: int, first_seq: int, chunks: list[bytes]) -> bool:
        """Record stream chunks numbered first_seq, first_seq + 1, ...; False if the attempt is stale."""
        ...

    async def events_after(self, run_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` (seq, chunk) after `after_seq`, in order; [] for an unknown run."""
        ...

    async def claim_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]:
        """This namespace's deliveries due now, leased so that no other dispatcher sends them
        meanwhile (a dispatcher of another namespace never sees them)."""
        ...

    async def record_delivery(
        self,
        delivery_id: str,
        attempts: int,
        delivered: bool,
        next_attempt_at: float | None,
        error: str | None,
    ) -> None:
        """After an attempt: delivered, retried at `next_attempt_at`, or failed for good (None).
        A delivery of another namespace is left alone."""
        ...

    def cancelled_runs(self) -> AsyncIterator[str]:
        """Ids of this namespace's runs as they are cancelled through any store instance (another
        replica's included), so the worker running one can stop it now, not at its next heartbeat.

        An endless async iterator; the caller stops it by cancelling the task iterating it.
        Best effort: a store that cannot broadcast (SQLite: its processes share only a file)
        never yields, and a missed message only delays the stop until the heartbeat, which
        the store refuses for a cancelled run (`heartbeat` False), so nothing depends on it.
        """
        ...

    async def sweep_expired(self, now: float) -> int:
        """Delete terminal runs past their TTL (with their events and deliveries); the count.

        At least this namespace's; a store may sweep other namespaces' expired runs too (the
        SQLite store does: an expired run already answers 404 to its own app, and no app on a
        shared file is then left to keep its dead runs forever). Never a run before its expiry.
        """
        ...


DEFAULT_STORE_FILE = "runs.db"
REDIS_SCHEMES = ("redis://", "rediss://")


def store_from_url(
    url: str | None, state_dir: Path, namespace: str, strict_durability: bool = False
) -> JobStore:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`; None: runs.db in state_dir;
    `redis://[:password@]host:port/db` or `rediss://...` (TLS) for replicas sharing one Redis.

    The store serves `namespace`, `"{project_id}/{app_name}"`, and only it (see JobStore).
    `strict_durability`: a Redis store refuses to open on a server that could lose acknowledged
    runs (CORTEX_STRICT_DURABILITY, passed in by the app).
    """
    if url is not None and url.startswith(REDIS_SCHEMES):
        from cortex.jobs.redis_store import RedisJobStore  # lazily: SQLite users never import redis

        return RedisJobStore(url, namespace, bool(strict_durability))

    from cortex.jobs.sqlite_store import SQLiteJobStore

    if url is None:
        return SQLiteJobStore(state_dir / DEFAULT_STORE_FILE, namespace)
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return SQLiteJobStore(Path(url[len("sqlite:///") :]), namespace)
    raise StoreError(
        f"CORTEX_STORE: unsupported store URL {url!r}. Use sqlite:///path/to/runs.db "
        "(sqlite:////abs/path for an absolute path), or redis://[:password@]host:6379/0 "
        "(rediss:// for TLS) to share runs between replicas."
    )
