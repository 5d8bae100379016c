"""Signed webhook delivery (Standard Webhooks, plus Cerebrium's signature) and its retry policy."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import httpx

from cortex import __version__
from cortex.errors import ConfigError, WebhookRefusedError
from cortex.jobs.models import Delivery
from cortex.jobs.ssrf import (
    RESOLVE_TIMEOUT,
    AsyncResolver,
    IPNetwork,
    check_webhook_url_async,
    resolve_host_async,
)

logger = logging.getLogger("cortex.webhooks")

# Seconds to wait after attempt 1, 2, ...: nine attempts spread over about four and a half hours.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (1, 5, 30, 120, 600, 1800, 3600, 10800)
DELIVERY_TIMEOUT = 10.0  # seconds for one attempt, connect to response headers
SECRET_VARIABLE = "CORTEX_WEBHOOK_SECRET"
RETRY_SCHEDULE_VARIABLE = "CORTEX_WEBHOOK_RETRY_SCHEDULE"
SECRET_FILE = "webhook_secret"
SECRET_PREFIX = "whsec_"
USER_AGENT = f"cortex-webhooks/{__version__}"


# -- Signing (pure) ---------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError saying what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("got a value without the whsec_ prefix")
    encoded = secret[len(SECRET_PREFIX) :].rstrip("=")
    try:  # the padding is optional, as the standardwebhooks libraries accept it either way
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("got a key that is not valid base64") from None
    if not key:
        raise ValueError("got an empty key")
    return key


def sign_headers(delivery: Delivery, secret: str, timestamp: int) -> dict[str, str]:
    """Every header of one attempt: Standard Webhooks, and Cerebrium's when the run carried
    X-Webhook-Secret (receivers written for Cerebrium verify that one)."""
    signed = f"{delivery.delivery_id}.{timestamp}.".encode() + delivery.payload
    signature = base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }
    if delivery.cerebrium_secret is not None:
        message = f"{delivery.run_id}.{timestamp}.".encode() + delivery.payload
        digest = hmac.new(delivery.cerebrium_secret.encode(), message, hashlib.sha256).hexdigest()
        headers["X-Request-Id"] = delivery.run_id
        headers["X-Cerebrium-Webhook-Timestamp"] = str(timestamp)
        headers["X-Cerebrium-Webhook-Signature"] = f"v1,{digest}"
    return headers


# -- The secret -------------------------------------------------------------------------------


def load_or_create_secret(configured: str | None, state_dir: Path) -> tuple[str, Path | None]:
    """The signing secret: CORTEX_WEBHOOK_SECRET's value, else the one kept in
    `state_dir/webhook_secret` (created on first use, mode 0600), with the file's path."""
    if configured is not None:
        return _require_secret(configured, SECRET_VARIABLE), None
    path = state_dir / SECRET_FILE
    try:
        try:
            secret = path.read_text().strip()
        except FileNotFoundError:
            return _create_secret(path), path
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read or create the webhook secret ({exc.strerror or exc}). "
            f"Make the directory writable or set {SECRET_VARIABLE}."
        ) from exc
    return _require_secret(secret, str(path), " Delete the file to have a new secret created."), path


def _require_secret(secret: str, where: str, hint: str = "") -> str:
    try:
        secret_key(secret)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: expected whsec_ followed by a base64-encoded key, {exc}.{hint}"
        ) from None
    return secret


def _create_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    # Written aside, then linked into place: a second server starting at the same moment never
    # reads a half-written file, and whichever link comes second keeps the first secret.
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        os.link(scratch, path)
    except FileExistsError:
        return _require_secret(path.read_text().strip(), str(path))
    finally:
        scratch.unlink(missing_ok=True)
    return secret


# -- Retry policy (pure) ----------------------------------------------------------------------


def parse_retry_schedule(text: str, label: str = RETRY_SCHEDULE_VARIABLE) -> tuple[float, ...]:
    """`1,5,30` -> (1.0, 5.0, 30.0): seconds to wait after the first, second, ... failed attempt."""
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        delays = ()
    if not delays or not all(math.isfinite(delay) and delay > 0 for delay in delays):
        raise ConfigError(
            f"{label}: expected comma-separated positive numbers of seconds such as 1,5,30, got {text!r}"
        )
    return delays


def is_delivered(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def retry_after_seconds(header: str, now: float) -> float | None:
    """A Retry-After value (delay-seconds or an HTTP-date) as seconds from `now`; None if invalid."""
    value = header.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²", which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)  # a date without a zone is taken as UTC


def next_attempt(
    attempts_made: int,
    schedule: Sequence[float],
    now: float,
    status: int | None,
    retry_after_header: str | None = None,
) -> float | None:
    """When to try again after attempt number `attempts_made` (1 for the first), or None for never.

    `status` is the HTTP status, None for a connection error or a timeout. Never again once
    delivered (2xx), when the receiver answers 410 Gone, or when the schedule is used up (so a
    schedule of n delays allows n + 1 attempts). A Retry-After on 429 or 503 is honoured when
    it asks for longer than the schedule, up to the schedule's longest delay.
    """
    assert attempts_made >= 1, "next_attempt is asked after an attempt"
    if is_delivered(status) or status == 410 or attempts_made > len(schedule):
        return None
    delay = schedule[attempts_made - 1]
    if status in (429, 503) and retry_after_header:
        asked = retry_after_seconds(retry_after_header, now)
        if asked is not None:
            delay = max(delay, min(asked, max(schedule)))
    return now + delay


# -- Delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    """How one attempt ended: an HTTP status, or `error` when no response came."""

    status: int | None
    error: str | None = None
    retry_after: str | None = None  # the response's Retry-After header, as sent

    @property
    def delivered(self) -> bool:
        return is_delivered(self.status)

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no response"
        if 300 <= self.status < 400:
            return f"HTTP {self.status} (redirects are not followed)"
        return f"HTTP {self.status}"


def new_client() -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment would make the connection, not us, so the
    # address check would no longer decide where the request goes.
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=DELIVERY_TIMEOUT)


async def deliver(
    client: httpx.AsyncClient,
    delivery: Delivery,
    secret: str,
    now: float,
    allow: Sequence[IPNetwork],
    *,
    timeout: float = DELIVERY_TIMEOUT,
    resolve: AsyncResolver = resolve_host_async,
) -> DeliveryResult:
    """One signed POST of `delivery`, to the address its URL resolves to right now (checked
    again, so a DNS answer that turned private since submission is refused)."""
    try:
        checked = await check_webhook_url_async(delivery.url, allow, resolve)
    except WebhookRefusedError as exc:
        return DeliveryResult(None, f"refused: {exc.message}")
    headers = {**sign_headers(delivery, secret, int(now)), "Host": checked.host_header}
    request = client.build_request(
        "POST",
        checked.connect_url,
        content=delivery.payload,
        headers=headers,
        timeout=timeout,
        extensions=checked.extensions,
    )
    try:
        # httpx's timeout bounds each read; wait_for bounds the whole attempt (a receiver
        # trickling its headers byte by byte).
        response = await asyncio.wait_for(client.send(request, stream=True, follow_redirects=False), timeout)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        return DeliveryResult(None, f"timed out after {timeout:g} s")
    except httpx.HTTPError as exc:
        return DeliveryResult(None, f"{type(exc).__name__}: {exc}")
    await response.aclose()  # the body is not needed, however large it is
    return DeliveryResult(response.status_code, None, response.headers.get("retry-after"))


class DeliveryStore(Protocol):
    """The part of JobStore the dispatcher uses."""

    async def claim_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]: ...

    async def record_delivery(
        self,
        delivery_id: str,
        attempts: int,
        delivered: bool,
        next_attempt_at: float | None,
        error: str | None,
    ) -> None: ...


class WebhookDispatcher:
    """Sends the store's due deliveries and records how each attempt went.

    - store: any JobStore (only claim_deliveries and record_delivery are used)
    - secret: the `whsec_` signing secret (see load_or_create_secret)
    - schedule: seconds between attempts (DEFAULT_RETRY_SCHEDULE, CORTEX_WEBHOOK_RETRY_SCHEDULE)
    - allow: networks a webhook may target although not public (CORTEX_WEBHOOK_ALLOW_CIDRS)
    - clock: UNIX time, for the attempt's timestamp and the next attempt's time
    - client: the httpx client to send with; by default one of new_client(), closed by aclose()
    - concurrency: attempts in flight at once; batch: deliveries claimed per run_once
    - timeout: seconds for one attempt; resolve: the async resolver (tests name their own hosts)
    - on_attempt: told each attempt's outcome once recorded: delivered, retrying or failed
    """

    def __init__(
        self,
        store: DeliveryStore,
        secret: str,
        schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE,
        allow: Sequence[IPNetwork] = (),
        clock: Callable[[], float] = time.time,
        *,
        client: httpx.AsyncClient | None = None,
        concurrency: int = 16,
        batch: int = 16,
        timeout: float = DELIVERY_TIMEOUT,
        resolve: AsyncResolver = resolve_host_async,
        on_attempt: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        _require_secret(secret, "webhook secret")  # fails here, not on every attempt
        self._store = store
        self._secret = secret
        self._schedule = tuple(schedule)
        self._allow = tuple(allow)
        self._clock = clock
        self._owns_client = client is None
        self._client = client or new_client()
        self._slots = asyncio.Semaphore(concurrency)
        self._batch = batch
        self._timeout = timeout
        self._resolve = resolve
        self._on_attempt = on_attempt  # "delivered", "retrying" or "failed" (e.g. a metric)
        self._wakeup = asyncio.Event()
        # Claimed deliveries wait for a slot, then resolve and send: the lease must outlast that,
        # and no more, since after a crash another dispatcher waits it out before resending.
        self.lease_seconds = math.ceil(batch / concurrency) * (timeout + RESOLVE_TIMEOUT) + 5

    async def run_once(self) -> int:
        """Attempt every delivery due now; the number attempted."""
        due = await self._store.claim_deliveries(self._clock(), self._batch, self.lease_seconds)
        outcomes = await asyncio.gather(*(self._attempt(d) for d in due), return_exceptions=True)
        for delivery, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, Exception):  # the store failed: the lease expires, it is retried
                logger.error(
                    "webhook %s: recording the attempt failed", delivery.delivery_id, exc_info=outcome
                )
        return len(due)

    async def run_forever(self, poll_interval: float = 1.0) -> None:
        """run_once until cancelled, waiting `poll_interval` (or a wake()) when nothing was due."""
        while True:
            try:
                attempted = await self.run_once()
            except Exception:  # a store hiccup must not stop webhooks for the server's lifetime
                logger.exception("webhook dispatcher: claiming deliveries failed; retrying")
                attempted = 0
            if attempted < self._batch:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), poll_interval)
                self._wakeup.clear()

    def wake(self) -> None:
        """Look for due deliveries now (call from the event loop, e.g. when a run finishes)."""
        self._wakeup.set()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _attempt(self, delivery: Delivery) -> None:
        async with self._slots:
            try:
                result = await deliver(
                    self._client, delivery, self._secret, self._clock(), self._allow,
                    timeout=self._timeout, resolve=self._resolve,
                )  # fmt: skip
            except Exception as exc:  # a bug of ours: recorded as a failed attempt, not lost
                logger.exception("webhook %s: attempt crashed", delivery.delivery_id)
                result = DeliveryResult(None, f"internal error: {type(exc).__name__}: {exc}")
        attempts = delivery.attempts + 1
        now = self._clock()
        retry_at = next_attempt(attempts, self._schedule, now, result.status, result.retry_after)
        error = None if result.delivered else result.describe()
        await self._store.record_delivery(delivery.delivery_id, attempts, result.delivered, retry_at, error)
        self._on_attempt("delivered" if result.delivered else "failed" if retry_at is None else "retrying")
        _log_attempt(delivery, attempts, result, retry_at, now)


def _log_attempt(
    delivery: Delivery, attempts: int, result: DeliveryResult, retry_at: float | None, now: float
) -> None:
    where = f"webhook for run {delivery.run_id} to {delivery.url}"
    if result.delivered:
        logger.info("%s delivered (HTTP %s, attempt %d)", where, result.status, attempts)
    elif retry_at is not None:
        logger.warning(
            "%s: %s (attempt %d); trying again in %.0f s", where, result.describe(), attempts, retry_at - now
        )
    else:
        logger.warning("%s: %s (attempt %d); giving up", where, result.describe(), attempts)
