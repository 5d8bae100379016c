"""Runs and their lifecycle: statuses, allowed transitions and what a poll shows (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

# A terminal run is never overwritten: a late result of a cancelled run is discarded.
ALLOWED_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.PROCESSING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.PROCESSING: frozenset(
        {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PENDING}
    ),  # -> PENDING: re-queued after a crash
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


def can_transition(current: RunStatus, new: RunStatus) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


class WebhookStatus(str, enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def delivery_status(delivered: bool, next_attempt_at: float | None) -> WebhookStatus:
    """After an attempt: delivered, pending (another attempt is due), or failed for good."""
    if delivered:
        return WebhookStatus.DELIVERED
    return WebhookStatus.FAILED if next_attempt_at is None else WebhookStatus.PENDING


@dataclass(frozen=True)
class RunRequest:
    """What a caller submitted; everything needed to run it again after a crash."""

    run_id: str
    function: str
    body: bytes  # the JSON body as received; validated again when the run starts
    created_at: float
    ttl_seconds: int
    streaming: bool = False  # a generator: its chunks are recorded as events
    webhook_url: str | None = None
    webhook_secret: str | None = None  # Cerebrium's X-Webhook-Secret, for its own signature
    idempotency_key: str | None = None
    body_hash: str | None = None  # sha256 of the body, to detect a reused idempotency key
    # How the result is given an OpenAI route's shape (openai_compat.models.ResultShape as JSON);
    # None: the function's own result.
    shape: str | None = None


@dataclass(frozen=True)
class RunError:
    type: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: a JSON result, or an error."""

    status: RunStatus  # COMPLETED, FAILED or CANCELLED
    run_time_ms: float
    result_json: bytes | None = None  # the result, already encoded as JSON
    error: RunError | None = None

    def __post_init__(self) -> None:
        assert self.status.is_terminal, "an outcome ends a run"


@dataclass(frozen=True)
class Run:
    request: RunRequest
    status: RunStatus
    attempt: int = 0  # 1 for the first claim; a re-queued run gets the next number
    started_at: float | None = None
    completed_at: float | None = None
    lease_until: float | None = None
    run_time_ms: float | None = None
    result_json: bytes | None = None
    error: RunError | None = None
    webhook_status: WebhookStatus | None = None
    webhook_attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.request.run_id

    @property
    def function(self) -> str:
        return self.request.function

    @property
    def expires_at(self) -> float | None:
        if self.completed_at is None:
            return None
        return self.completed_at + self.request.ttl_seconds

    def is_expired(self, now: float) -> bool:
        expires_at = self.expires_at
        return expires_at is not None and now >= expires_at


@dataclass(frozen=True)
class Delivery:
    """One webhook to send: its id (`webhook-id`) is constant across attempts."""

    delivery_id: str
    run_id: str
    url: str
    payload: bytes
    attempts: int = 0
    next_attempt_at: float = 0.0
    cerebrium_secret: str | None = None


def finished(run_time_ms: float, result_json: bytes | None, error: RunError | None) -> Outcome:
    """How a call ended: failed with `error`, else completed with its JSON result."""
    if error is not None:
        return Outcome(RunStatus.FAILED, run_time_ms, error=error)
    return Outcome(RunStatus.COMPLETED, run_time_ms, result_json=result_json)


def webhook_payload(request: RunRequest, outcome: Outcome) -> bytes:
    """The body POSTed to a webhook: the sync envelope plus `status` (JSON bytes)."""
    parts = [
        b'{"run_id":' + to_json(request.run_id),
        b'"status":' + to_json(outcome.status.value),
        b'"run_time_ms":' + repr(round(outcome.run_time_ms, 3)).encode(),
    ]
    if outcome.result_json is not None:
        parts.append(b'"result":' + outcome.result_json)
    if outcome.error is not None:
        error = (
            b'{"type":' + to_json(outcome.error.type) + b',"message":' + to_json(outcome.error.message) + b"}"
        )
        parts.append(b'"error":' + error)
    return b",".join(parts) + b"}"
