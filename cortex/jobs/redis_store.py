"""JobStore on Redis: many replicas of one app share its runs, queue, events and webhook outbox.

`CORTEX_STORE=redis://[:password@]host:port/db` (or rediss://). The key layout and the Lua
scripts that keep every check-and-set atomic are in redis_scripts.py; encoding in redis_codec.py.

Key layout, all under `cortex:{namespace}:` (one hash slot per app; details in redis_scripts.py):
run:<id> (hash), status:<status> / runs / expiries (zsets by created_at, for listing, counting,
ordering the queue and the sweep), leases (zset by lease_until), queue (stream, group `workers`),
events:<id>, idem:<key>, delivery:<id> + deliveries (the webhook outbox), position, and the
`cancelled` pub/sub channel.

The queue is a Redis Stream read through one consumer group per namespace; each store instance
is a consumer of its own (hostname:pid:random). Submit adds the run and a stream entry in one
script. A claim is one script: XREADGROUP one entry for this consumer (its own pending entries
first, then a new one), XACK + XDEL it, and turn the oldest pending run into processing (attempt
+1, lease until now + lease_seconds on the caller's clock, owner, entry), returning its fields.
The entry picks who claims, the pending index (created_at, then submission order) picks which run:
the contract wants the oldest run first even when runs arrive out of created order, and a
re-queued run back in its old place, which FIFO delivery alone would not give. Submits and
re-queues each add an entry and only claims remove them, so there is never a pending run without
an entry; an entry left over by a cancel is dropped by the claim that finds nothing pending.

Reading and acknowledging in one script leaves no window in which a dying replica holds an entry.
An entry stuck in a dead reader's PEL all the same (a reader outside this store, or one that died
mid-way) is taken over by `recover` with XAUTOCLAIM once idle `orphan_idle_seconds` on the
server's clock (a safety net only), and this consumer's next claim re-reads it. Leases are the
"lease + heartbeat" equivalent of XAUTOCLAIM: a run whose owner stops heart-beating is re-queued
(a new entry) by `recover` on any replica once its lease runs out on the caller's clock, and its
attempt number fences the old owner's late writes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from cortex.errors import IdempotencyConflictError, OverloadedError, StoreError
from cortex.jobs import redis_codec as codec
from cortex.jobs import redis_scripts as scripts
from cortex.jobs.models import (
    Delivery,
    Outcome,
    Run,
    RunError,
    RunRequest,
    RunStatus,
    delivery_status,
    webhook_payload,
)
from cortex.jobs.sqlite_schema import CANCELLED_ERROR

logger = logging.getLogger("cortex.jobs")

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0  # seconds to reach the server before a call fails with StoreError
COMMAND_TIMEOUT = 10.0
SWEEP_BATCH = 1000  # expired runs deleted per script call (a script blocks the server meanwhile)
CANCEL_RETRIES = 10  # a cancel races a claim or a finish at most this many times
CLAIM_READS = 100  # queue entries one claim script reads at most (left-overs of cancelled runs)
RECOVER_BATCH = 1000  # expired leases and orphaned entries handled per recover call
ORPHAN_IDLE_SECONDS = 60.0  # a few leases: a stream entry unacknowledged this long is taken over
RESUBSCRIBE_SECONDS = 1.0


class RedisJobStore:
    """JobStore on one Redis database, shared by every replica of the namespace's app.

    Use it on the event loop that opened it (its connections belong to that loop).
    `orphan_idle_seconds`: how long (server clock) a queue entry may sit unacknowledged in
    another consumer's PEL before `recover` takes it over.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        strict_durability: bool = False,
        orphan_idle_seconds: float = ORPHAN_IDLE_SECONDS,
    ) -> None:
        assert namespace, "a store serves one app: pass its namespace"
        self.url = url
        self.namespace = namespace
        self.strict_durability = strict_durability
        self.prefix = codec.key_prefix(namespace)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.orphan_idle_seconds = orphan_idle_seconds
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def where(self) -> str:
        return f"Job store {codec.masked(self.url)}"

    async def open(self) -> None:
        if self._redis is not None:
            return
        client = aioredis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT
        )
        try:
            await client.ping()
            await self._check_durability(client)
            await _create_group(client, self.prefix + "queue")
        except RedisError as exc:
            await client.aclose()
            raise StoreError(
                f"CORTEX_STORE: cannot use Redis at {codec.masked(self.url)}: {exc}. "
                "Check that the server is running and reachable, and the password in the URL."
            ) from exc
        except BaseException:
            await client.aclose()
            raise
        self._redis = client
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in (
                "SUBMIT",
                "CLAIM",
                "HEARTBEAT",
                "APPEND_EVENTS",
                "TERMINATE",
                "RECORD_FINISHED",
                "RECOVER",
                "CLAIM_DELIVERIES",
                "RECORD_DELIVERY",
                "GET",
                "SWEEP",
            )
        }
        await self._recover_script("", 1)  # the queue's safety net only: leases are the worker's

    async def _check_durability(self, client: aioredis.Redis) -> None:
        try:
            appendonly = _config_value(await client.config_get("appendonly"), "appendonly")
            policy = _config_value(await client.config_get("maxmemory-policy"), "maxmemory-policy")
        except ResponseError as exc:  # CONFIG renamed or disabled (managed services often do)
            message = (
                f"{self.where}: cannot check durability, CONFIG GET is refused ({exc}). Make sure "
                "the server has appendonly yes, appendfsync everysec and maxmemory-policy "
                "noeviction, or acknowledged runs could be lost."
            )
            self._durability_verdict(message)
            return
        problems = codec.durability_problems(appendonly, policy)
        if problems:
            self._durability_verdict(f"{self.where}: acknowledged runs could be lost: {'; '.join(problems)}.")

    def _durability_verdict(self, message: str) -> None:
        if self.strict_durability:
            raise StoreError(
                f"{message} Refusing to start because CORTEX_STRICT_DURABILITY is set; unset it to "
                "start anyway."
            )
        logger.warning(message)

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    # --- runs -----------------------------------------------------------------------------

    async def submit(self, request: RunRequest, max_pending: int) -> tuple[Run, bool]:
        args = [
            request.run_id,
            codec.number(request.created_at),
            request.idempotency_key or "",
            request.body_hash or "",
            str(max_pending),
            *codec.request_fields(request),
            "status",
            RunStatus.PENDING.value,
            "attempt",
            "0",
        ]
        code, value = await self._script("SUBMIT", *args)
        run_id = value.decode()
        if code == 1:
            return Run(request=request, status=RunStatus.PENDING), True
        if code == 0:
            existing = await self.get(run_id)
            if existing is not None:
                return existing, False
            return await self.submit(request, max_pending)  # expired just now: the key is free
        if code == 2:
            raise IdempotencyConflictError(
                f"Idempotency-Key '{request.idempotency_key}' was already used with a different "
                f"body (run {run_id}). Use a new key for a new request."
            )
        raise OverloadedError(
            f"Too many queued runs: {run_id} pending (CORTEX_MAX_QUEUE={max_pending}). Retry after a moment."
        )

    async def get(self, run_id: str) -> Run | None:
        flat = await self._script("GET", run_id)
        return None if not flat else codec.run_from_fields(run_id, codec.pairs_to_fields(flat))

    async def list_runs(
        self, status: RunStatus | None, function: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        after = None if cursor is None else codec.decode_cursor(cursor)
        index = self.prefix + ("runs" if status is None else f"status:{status.value}")
        top: float | str = "+inf" if after is None else after[0]
        found: list[tuple[Run, float, bytes]] = []
        offset, batch = 0, max(limit + 1, 50)
        while len(found) <= limit:
            page_of = functools.partial(_index_page, index, top, offset, batch)
            entries: list[tuple[bytes, float]] = await self._call(page_of)
            offset += len(entries)
            wanted = [(m, s) for m, s in entries if after is None or codec.is_before(s, m, after)]
            runs = await self._get_many([m.split(b":", 1)[1].decode() for m, _ in wanted])
            for (member, score), run in zip(wanted, runs, strict=True):
                # Gone (expired in Redis) or changed status since the index was read: skip it.
                if run is None or (status is not None and run.status is not status):
                    continue
                if function is None or run.function == function:
                    found.append((run, score, member))
            if len(entries) < batch:
                break
        page = found[:limit]
        next_cursor = codec.encode_cursor(page[-1][1], page[-1][2]) if len(found) > limit and page else None
        return [run for run, _, _ in page], next_cursor

    async def _get_many(self, run_ids: list[str]) -> list[Run | None]:
        if not run_ids:
            return []

        async def read(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    await self._scripts["GET"](args=[self.prefix, run_id], client=pipe)
                return await pipe.execute()

        results = await self._call(read)
        return [
            None if not flat else codec.run_from_fields(run_id, codec.pairs_to_fields(flat))
            for run_id, flat in zip(run_ids, results, strict=True)
        ]

    async def count_runs(self) -> dict[RunStatus, int]:
        async def count(client: aioredis.Redis) -> list[int]:
            async with client.pipeline(transaction=False) as pipe:
                for status in RunStatus:
                    pipe.zcard(f"{self.prefix}status:{status.value}")
                return await pipe.execute()

        counts = await self._call(count)
        # Until the sweep, a terminal run Redis already expired is still counted.
        return {status: n for status, n in zip(RunStatus, counts, strict=True) if n}

    # --- the queue and attempts -----------------------------------------------------------

    async def claim(self, now: float, lease_seconds: float) -> Run | None:
        lease_until = codec.number(now + lease_seconds)
        claimed = await self._script("CLAIM", codec.number(now), lease_until, self.consumer, str(CLAIM_READS))
        if not claimed:
            return None
        run_id, flat = claimed
        return codec.run_from_fields(run_id.decode(), codec.pairs_to_fields(flat))

    async def heartbeat(self, run_id: str, attempt: int, lease_until: float) -> bool:
        return bool(await self._script("HEARTBEAT", run_id, str(attempt), codec.number(lease_until)))

    async def finish(self, run_id: str, attempt: int, outcome: Outcome, now: float) -> Run | None:
        run = await self.get(run_id)
        if run is None or run.status is not RunStatus.PROCESSING or run.attempt != attempt:
            return None  # cancelled, re-queued or recovered meanwhile: this result is discarded
        return await self._terminate(run, outcome, now)

    async def record_finished(self, request: RunRequest, outcome: Outcome, now: float) -> Run:
        # It ran once, just now: its start is inferred from its own run time.
        started_at = now - outcome.run_time_ms / 1000
        fields = [*codec.request_fields(request), "status", RunStatus.PROCESSING.value, "attempt", "1"]
        fields += ["started_at", codec.number(started_at)]
        outcome_args = self._outcome_args(request, outcome, now)
        await self._script(
            "RECORD_FINISHED", request.run_id, codec.number(request.created_at), *outcome_args, *fields
        )
        run = await self.get(request.run_id)
        assert run is not None
        return run

    async def cancel(self, run_id: str, now: float) -> tuple[Run | None, RunStatus | None]:
        for _ in range(CANCEL_RETRIES):  # the run changed between the read and the write: again
            run = await self.get(run_id)
            if run is None:
                return None, None
            if run.status.is_terminal:
                return run, run.status
            started = run.started_at if run.status is RunStatus.PROCESSING else None
            elapsed_ms = 0.0 if started is None else max(0.0, (now - started) * 1000)
            ended = await self._terminate(
                run, Outcome(RunStatus.CANCELLED, elapsed_ms, error=CANCELLED_ERROR), now
            )
            if ended is not None:
                return ended, run.status
        raise StoreError(f"{self.where}: run {run_id} kept changing while being cancelled; try again.")

    async def recover(self, now: float, max_attempts: int) -> tuple[int, int]:
        requeued, out_of_attempts = await self._recover_script(codec.number(now), max_attempts)
        failed = 0
        for run in await self._get_many([run_id.decode() for run_id in out_of_attempts]):
            if run is None:
                continue  # expired in Redis; the sweep clears its index entries
            error = RunError(
                "Interrupted",
                f"The server stopped {run.attempt} times while running this run "
                f"(CORTEX_MAX_ATTEMPTS={max_attempts}).",
            )
            # The attempt's own run time died with the process that measured it.
            outcome = Outcome(RunStatus.FAILED, 0.0, error=error)
            failed += await self._terminate(run, outcome, now, now) is not None
        return requeued, failed

    async def _recover_script(self, now: str, max_attempts: int) -> tuple[int, list[bytes]]:
        orphan_ms = str(int(self.orphan_idle_seconds * 1000))
        args = [now, str(max_attempts), self.consumer, orphan_ms, str(RECOVER_BATCH)]
        requeued, out_of_attempts = await self._script("RECOVER", *args)
        return int(requeued), out_of_attempts

    async def _terminate(
        self, run: Run, outcome: Outcome, now: float, lease_before: float | None = None
    ) -> Run | None:
        """End `run` if it is still in the status and attempt it was read with: the run after."""
        fence = [
            run.status.value,
            str(run.attempt),
            "" if lease_before is None else codec.number(lease_before),
        ]
        args = self._outcome_args(run.request, outcome, now)
        flat = await self._script("TERMINATE", run.run_id, *fence, *args)
        return codec.run_from_fields(run.run_id, codec.pairs_to_fields(flat)) if flat else None

    @staticmethod
    def _outcome_args(request: RunRequest, outcome: Outcome, now: float) -> list[bytes | str]:
        delivery_id = f"msg_{uuid.uuid4().hex}" if request.webhook_url is not None else ""
        payload = webhook_payload(request, outcome) if request.webhook_url is not None else b""
        return codec.outcome_args(outcome, now, request.ttl_seconds, delivery_id, payload)

    # --- stream events --------------------------------------------------------------------

    async def append_events(self, run_id: str, attempt: int, first_seq: int, chunks: list[bytes]) -> bool:
        return bool(await self._script("APPEND_EVENTS", run_id, str(attempt), str(first_seq), *chunks))

    async def events_after(self, run_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        key = f"{self.prefix}events:{run_id}"  # under this namespace's prefix: never another app's
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._call(
            lambda r: r.xrange(key, min=f"{max(after_seq + 1, 0)}-0", max="+", count=limit)
        )
        return [(int(entry_id.split(b"-", 1)[0]), fields[b"c"]) for entry_id, fields in entries]

    # --- cancellations made on any replica ------------------------------------------------

    async def cancelled_runs(self) -> AsyncIterator[str]:
        """Ids of this namespace's runs as they are cancelled, through any replica (pub/sub).

        At most once: a cancel published while this replica is disconnected is missed, and the
        worker then learns it from its next heartbeat (which the store refuses). Resubscribes
        after a lost connection; runs until the caller stops iterating.
        """
        channel = self.prefix + "cancelled"
        while True:
            pubsub = self._client().pubsub(ignore_subscribe_messages=True)
            reading: asyncio.Future[Any] | None = None
            try:
                await pubsub.subscribe(channel)
                while True:
                    reading = asyncio.ensure_future(pubsub.get_message(timeout=COMMAND_TIMEOUT / 2))
                    message = await asyncio.shield(reading)  # see _shielded
                    if message is not None and message["type"] == "message":
                        yield message["data"].decode()
            except RedisError as exc:
                logger.warning("%s: lost the cancellation channel (%s); resubscribing", self.where, exc)
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
                if reading is not None:  # its connection is closed now: it ends at once
                    reading.add_done_callback(_retrieve)
                    await asyncio.wait({reading}, timeout=COMMAND_TIMEOUT)

    # --- webhooks -------------------------------------------------------------------------

    async def claim_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]:
        leased_until = now + lease_seconds  # another dispatcher sees them as not due until then
        claimed = await self._script(
            "CLAIM_DELIVERIES", codec.number(now), str(limit), codec.number(leased_until)
        )
        deliveries = []
        for flat in claimed:
            fields = codec.pairs_to_fields(flat)
            secret = fields.get(b"cerebrium_secret")
            deliveries.append(
                Delivery(
                    delivery_id=fields[b"delivery_id"].decode(),
                    run_id=fields[b"run_id"].decode(),
                    url=fields[b"url"].decode(),
                    payload=fields[b"payload"],
                    attempts=int(fields[b"attempts"]),
                    next_attempt_at=leased_until,
                    cerebrium_secret=None if secret is None else secret.decode(),
                )
            )
        return deliveries

    async def record_delivery(
        self,
        delivery_id: str,
        attempts: int,
        delivered: bool,
        next_attempt_at: float | None,
        error: str | None,
    ) -> None:
        status = delivery_status(delivered, next_attempt_at)
        after = "" if next_attempt_at is None else codec.number(next_attempt_at)
        await self._script("RECORD_DELIVERY", delivery_id, str(attempts), status.value, after, error or "")

    async def sweep_expired(self, now: float) -> int:
        """This namespace's only: another app's runs expire in Redis by themselves (their TTL)."""
        swept = 0
        while (batch := int(await self._script("SWEEP", codec.number(now), str(SWEEP_BATCH)))) > 0:
            swept += batch
            if batch < SWEEP_BATCH:
                break
        return swept

    # --- plumbing -------------------------------------------------------------------------

    def _client(self) -> aioredis.Redis:
        assert self._redis is not None, "RedisJobStore used while closed: open() it first"
        return self._redis

    async def _script(self, name: str, *args: bytes | str) -> Any:
        client = self._client()  # taken now: a call made before close() fails, never hangs
        script = self._scripts[name]
        return await self._call(lambda _: script(args=[self.prefix, *args], client=client))

    async def _call(self, work: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        """Redis errors (connection lost, server loading, ...) as StoreError; redis-py
        reconnects on the next call, so the store recovers when the server is back."""
        client = self._client()
        try:
            return await _shielded(work(client))
        except RedisError as exc:
            raise StoreError(f"{self.where}: {type(exc).__name__}: {exc}.") from exc


async def _shielded(call: Awaitable[T]) -> T:
    """Await `call` in a task of its own, so that cancelling the caller always cancels it.

    redis-py can swallow a cancellation that lands mid-command (the caller then runs on: a
    worker's stop() would wait forever). Shielded, the caller gets CancelledError at once and
    the command completes on its own, its connection left in a clean state; a write it makes
    after all is fenced like any late write (a claim is recovered when its lease runs out).
    """
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # nobody awaits it after a cancel: no "exception never retrieved"


async def _create_group(client: aioredis.Redis, queue: str) -> None:
    """The namespace's consumer group, from the stream's start (entries made before it count)."""
    try:
        await client.xgroup_create(queue, scripts.GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # made already by another replica
            raise


def _index_page(
    index: str, top: float | str, offset: int, count: int, client: aioredis.Redis
) -> Awaitable[Any]:
    return client.zrevrangebyscore(index, top, "-inf", start=offset, num=count, withscores=True)


def _config_value(reply: dict[Any, Any], name: str) -> str | None:
    for key, value in reply.items():
        if (key.decode() if isinstance(key, bytes) else key) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
