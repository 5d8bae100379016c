"""Async runs over HTTP: submit (`?async=true`), poll, list, cancel, replay a run's events."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from pydantic_core import from_json
from starlette.types import Receive, Scope, Send

from cortex.discovery import FunctionSpec
from cortex.errors import (
    BadRequestError,
    ConflictError,
    MethodNotAllowedError,
    NotFoundError,
    RunExpiredError,
)
from cortex.jobs.models import Run, RunRequest, RunStatus
from cortex.jobs.store import JobStore
from cortex.jobs.worker import RunWorker
from cortex.responses import SSE_HEADERS, send_json, wait_for_disconnect
from cortex.serialization import encode_json

DEFAULT_RESULT_TTL = 3600
TTL_HEADERS = (b"x-bf-async-job-result-ttl", b"x-cortex-result-ttl")
LIST_LIMIT_MAX = 100
MAX_RESULT_TTL = 366 * 24 * 3600  # a year; also keeps the expiry time a number SQLite can store
MAX_EVENT_ID = 2**63 - 1  # SQLite's largest integer
EVENTS_PAGE = 500
EVENTS_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class CallOptions:
    """What the query string and headers ask of one call, beyond its arguments."""

    run_async: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = None
    ttl_seconds: int = DEFAULT_RESULT_TTL
    idempotency_key: str | None = None


NO_OPTIONS = CallOptions()


def parse_call_options(scope: Scope) -> CallOptions:
    """`?async=true&webhookEndpoint=...`, the result TTL and Idempotency-Key headers (pure)."""
    query = parse_qs(scope["query_string"].decode("latin-1")) if scope["query_string"] else {}
    headers = {name: value for name, value in scope["headers"] if name in _OPTION_HEADERS}
    if not query and not headers:
        return NO_OPTIONS  # the common case: a plain sync call
    return CallOptions(
        run_async=_flag(query.get("async", ["false"])[-1]),
        webhook_url=query.get("webhookEndpoint", [None])[-1],
        webhook_secret=_header_text(headers.get(b"x-webhook-secret")),
        ttl_seconds=_ttl(headers),
        idempotency_key=_header_text(headers.get(b"idempotency-key")),
    )


_OPTION_HEADERS = frozenset({*TTL_HEADERS, b"x-webhook-secret", b"idempotency-key"})


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise BadRequestError(f"Query parameter async must be true or false, got {value!r}.")


def _ttl(headers: dict[bytes, bytes]) -> int:
    for name in TTL_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        text = raw.decode("latin-1").strip()
        seconds = _whole_number(text, MAX_RESULT_TTL)
        if seconds is None or seconds <= 0:
            raise BadRequestError(
                f"Header {name.decode()} must be a whole number of seconds from 1 to {MAX_RESULT_TTL}, "
                f"got {text[:40]!r}."
            )
        return seconds
    return DEFAULT_RESULT_TTL


def _whole_number(text: str, maximum: int) -> int | None:
    """ASCII digits only (str.isdigit also takes '²', which int() refuses), at most `maximum`."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


def _header_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("latin-1").strip() or None


def new_run_request(
    spec: FunctionSpec, body: bytes, run_id: str, options: CallOptions, now: float, shape: str | None = None
) -> RunRequest:
    return RunRequest(
        run_id=run_id,
        function=spec.name,
        body=body,
        created_at=now,
        ttl_seconds=options.ttl_seconds,
        streaming=spec.kind.is_streaming,
        webhook_url=options.webhook_url,
        webhook_secret=options.webhook_secret,
        # Idempotency is for submitted runs; a sync call is answered in full every time.
        idempotency_key=options.idempotency_key if options.run_async else None,
        body_hash=hashlib.sha256(body).hexdigest() if options.idempotency_key and options.run_async else None,
        shape=shape,
    )


class RunRoutes:
    """The /runs endpoints and async submission, over a JobStore and its worker."""

    def __init__(
        self, store: JobStore, worker: RunWorker, base_path: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.worker = worker
        self.base_path = base_path
        self.clock = clock

    async def submit(self, request: RunRequest, max_pending: int, send: Send) -> None:
        run, created = await self.store.submit(request, max_pending)  # durable before the 202
        if created:
            self.worker.wake()
        location = f"{self.base_path}/runs/{run.run_id}".encode()
        body = encode_json({"run_id": run.run_id, "status": run.status.value})
        await send_json(send, 202, body, run.run_id, [(b"location", location)])

    async def handle(self, scope: Scope, receive: Receive, send: Send, rest: list[str]) -> None:
        """`rest` is the path after /runs: [] (list), [id] (poll, cancel), [id, "events"]."""
        method = scope["method"]
        _check_method(method, scope["path"], rest)
        if not rest:
            await self._list(scope, send)
        elif len(rest) == 1 and method == "GET":
            await self._poll(rest[0], send)
        elif len(rest) == 1:
            await self._cancel(rest[0], send)
        else:
            await self._events(rest[0], scope, receive, send)

    async def _live_run(self, run_id: str) -> Run:
        run = await self.store.get(run_id)
        if run is None:
            raise NotFoundError(f"No run '{run_id}' (it never existed, or was deleted after its TTL).")
        if run.is_expired(self.clock()):
            raise RunExpiredError(f"Run '{run_id}' expired at {_iso(run.expires_at)}; its result is gone.")
        return run

    async def _poll(self, run_id: str, send: Send) -> None:
        run = await self._live_run(run_id)
        status = 200 if run.status.is_terminal else 202
        await send_json(send, status, encode_json(describe_run(run)), run.run_id)

    async def _list(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope["query_string"].decode("latin-1"))
        status = _status_filter(query.get("status", [None])[-1])
        limit = _limit(query.get("limit", ["20"])[-1])
        runs, cursor = await self.store.list_runs(
            status, query.get("function", [None])[-1], limit, query.get("cursor", [None])[-1]
        )
        now = self.clock()
        body = {"runs": [describe_run(run) for run in runs if not run.is_expired(now)], "next_cursor": cursor}
        await send_json(send, 200, encode_json(body), None)

    async def _cancel(self, run_id: str, send: Send) -> None:
        await self._live_run(run_id)
        run, before = await self.worker.cancel(run_id)
        if run is None or before is None:
            raise NotFoundError(f"No run '{run_id}'.")
        if before.is_terminal:
            raise ConflictError(f"Run '{run_id}' already ended ({before.value}); there is nothing to cancel.")
        await send_json(send, 200, encode_json(describe_run(run)), run.run_id)

    async def _events(self, run_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        run = await self._live_run(run_id)
        if not run.request.streaming:
            raise NotFoundError(f"Run '{run_id}' is not a generator run: it has no events. Poll it instead.")
        after = _last_event_id(scope)
        headers = [*SSE_HEADERS, (b"x-request-id", run_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        replay = asyncio.ensure_future(self._replay(run_id, after, send))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        await asyncio.wait((replay, gone), return_when=asyncio.FIRST_COMPLETED)
        for task in (replay, gone):
            task.cancel()
        if replay.done() and not replay.cancelled() and replay.exception() is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _replay(self, run_id: str, after: int, send: Send) -> None:
        """Send stored events after `after`, then follow new ones until the run ends."""
        while True:
            run = await self.store.get(run_id)
            finished = run is None or run.status.is_terminal
            events = await self.store.events_after(run_id, after, EVENTS_PAGE)
            if events:
                frames = [b"id: %d\n" % seq + data for seq, data in events]
                await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
                after = events[-1][0]
                continue
            if finished:
                return
            await asyncio.sleep(EVENTS_POLL_SECONDS)


def _check_method(method: str, path: str, rest: list[str]) -> None:
    """404 for a path under /runs that does not exist, 405 (with Allow) for a wrong method."""
    if len(rest) > 2 or (len(rest) == 2 and rest[1] != "events"):
        raise NotFoundError(f"No route {method} {path}.")
    allow = "GET, DELETE" if len(rest) == 1 else "GET"
    if method not in allow.split(", "):
        raise MethodNotAllowedError(f"Use {allow} on {path}; got {method}.", allow)


def describe_run(run: Run) -> dict[str, Any]:
    """What a poll shows (pure): always who and when; the outcome once there is one."""
    view: dict[str, Any] = {
        "run_id": run.run_id,
        "function": run.function,
        "status": run.status.value,
        "created_at": _iso(run.request.created_at),
        "started_at": _iso(run.started_at),
    }
    if not run.status.is_terminal:
        return view
    view.update(
        completed_at=_iso(run.completed_at),
        expires_at=_iso(run.expires_at),
        run_time_ms=None if run.run_time_ms is None else round(run.run_time_ms, 3),
    )
    if run.error is not None:
        view["error"] = {"type": run.error.type, "message": run.error.message}
    else:
        view["result"] = from_json(run.result_json) if run.result_json is not None else None
    if run.webhook_status is not None:
        view["webhook"] = {"status": run.webhook_status.value, "attempts": run.webhook_attempts}
    return view


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _status_filter(value: str | None) -> RunStatus | None:
    if value is None:
        return None
    try:
        return RunStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise BadRequestError(f"status must be one of {allowed}; got {value!r}.") from None


def _limit(value: str) -> int:
    number = _whole_number(value, LIST_LIMIT_MAX)
    if number is None or number < 1:
        raise BadRequestError(f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}; got {value[:40]!r}.")
    return number


def _last_event_id(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            text = value.decode("latin-1").strip()
            number = _whole_number(text.removeprefix("-"), MAX_EVENT_ID)
            if number is None:
                raise BadRequestError(f"Last-Event-ID must be an event number, got {text[:40]!r}.")
            return -number if text.startswith("-") else number
    return -1
