"""The Redis job store's pure parts: key names, hash fields <-> Run, cursors, URLs, durability.

Hash fields hold bytes; an absent field is None. Floats are written with repr() so that they
read back equal (a run read back is == to the one returned when it was written).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from cortex.jobs import paging
from cortex.jobs.models import Outcome, Run, RunError, RunRequest, RunStatus, WebhookStatus

Fields = dict[bytes, bytes]


def key_prefix(namespace: str) -> str:
    """`cortex:{p-one/app}:`: the braces make the namespace a hash tag (one cluster slot)."""
    return f"cortex:{{{namespace}}}:"


def number(value: float) -> str:
    return repr(float(value))


def request_fields(request: RunRequest) -> list[bytes | str]:
    """The immutable part of a run's hash, as field/value pairs (None fields left out)."""
    values: dict[str, bytes | str | None] = {
        "function": request.function,
        "body": request.body,
        "created_at": number(request.created_at),
        "ttl_seconds": str(request.ttl_seconds),
        "streaming": "1" if request.streaming else "0",
        "webhook_url": request.webhook_url,
        "webhook_secret": request.webhook_secret,
        "idempotency_key": request.idempotency_key,
        "body_hash": request.body_hash,
        "shape": request.shape,
    }
    return [item for name, value in values.items() if value is not None for item in (name, value)]


def outcome_args(
    outcome: Outcome, now: float, ttl_seconds: int, delivery_id: str, payload: bytes
) -> list[bytes | str]:
    """What the scripts' terminate() takes (see outcome_at in redis_scripts)."""
    error = outcome.error
    return [
        outcome.status.value,
        number(now),
        number(now + ttl_seconds),
        str(max(1, int(ttl_seconds * 1000))),
        delivery_id,
        payload,
        number(outcome.run_time_ms),
        b"" if outcome.result_json is None else outcome.result_json,
        "" if error is None else error.type,
        "" if error is None else error.message,
    ]


def _text(fields: Fields, name: str) -> str | None:
    value = fields.get(name.encode())
    return None if value is None else value.decode()


def _float(fields: Fields, name: str) -> float | None:
    value = fields.get(name.encode())
    return None if value is None else float(value)


def run_from_fields(run_id: str, fields: Fields) -> Run:
    request = RunRequest(
        run_id=run_id,
        function=fields[b"function"].decode(),
        body=fields[b"body"],
        created_at=float(fields[b"created_at"]),
        ttl_seconds=int(fields[b"ttl_seconds"]),
        streaming=fields.get(b"streaming") == b"1",
        webhook_url=_text(fields, "webhook_url"),
        webhook_secret=_text(fields, "webhook_secret"),
        idempotency_key=_text(fields, "idempotency_key"),
        body_hash=_text(fields, "body_hash"),
        shape=_text(fields, "shape"),
    )
    error_type = _text(fields, "error_type")
    webhook = _text(fields, "webhook_status")
    return Run(
        request=request,
        status=RunStatus(fields[b"status"].decode()),
        attempt=int(fields.get(b"attempt", b"0")),
        started_at=_float(fields, "started_at"),
        completed_at=_float(fields, "completed_at"),
        lease_until=_float(fields, "lease_until"),
        run_time_ms=_float(fields, "run_time_ms"),
        result_json=fields.get(b"result_json"),
        error=None if error_type is None else RunError(error_type, _text(fields, "error_message") or ""),
        webhook_status=None if webhook is None else WebhookStatus(webhook),
        webhook_attempts=int(fields.get(b"webhook_attempts", b"0")),
    )


def pairs_to_fields(flat: list[bytes]) -> Fields:
    return dict(zip(flat[::2], flat[1::2], strict=True))


# Cursors: the same shape as the SQLite store's, (created_at, position) of the last run shown.


def encode_cursor(created_at: float, member: bytes) -> str:
    return paging.encode_cursor(created_at, int(member.split(b":", 1)[0]))


def decode_cursor(cursor: str) -> tuple[float, int]:
    return paging.decode_cursor(cursor)


def is_before(score: float, member: bytes, cursor: tuple[float, int]) -> bool:
    """Whether an index entry comes after the cursor's run, newest first: (created, position) <."""
    return (score, int(member.split(b":", 1)[0])) < cursor


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def durability_problems(appendonly: str | None, policy: str | None) -> list[str]:
    """Why acknowledged runs could be lost on this server (pure: CONFIG GET values in)."""
    problems = []
    if appendonly is not None and appendonly != "yes":
        problems.append(
            "appendonly is 'no': a restart of Redis loses every run since the last snapshot "
            "(set `appendonly yes` and `appendfsync everysec`)"
        )
    if policy is not None and policy != "noeviction":
        problems.append(
            f"maxmemory-policy is '{policy}': when memory is full Redis evicts keys, runs and "
            "queue entries included (set `maxmemory-policy noeviction`)"
        )
    return problems
