"""Prometheus metrics of one server, in its own CollectorRegistry (several servers per process
in tests never clash), and the figures the dashboard shows.

Per call the cost is a few µs: labelled children are bound once per (function, kind, status)
and cached; gauges that mirror live state (calls in flight and queued, runs by status) are read
only when /metrics is scraped.

Runs by status come from the job store at scrape time (`JobStore.count_runs`), not from
counters bumped on submit and finish: the store is the truth, survives restarts, and is shared
by every process serving the app, so each one reports the same numbers; a counter in one process
would miss the runs that another process (or a previous life of this one) took.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import Message, Send

from cortex.concurrency import AdmissionGate
from cortex.jobs.models import RunStatus
from cortex.streaming import encode_event

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RECENT_LATENCIES = 1000  # per function, for the dashboard's percentiles
NO_RESPONSE = 499  # the client left before any response was sent (as nginx logs it)


class CallObserver:
    """One call under /v4/: wraps `send` to see the status; the handler names the function and
    the route kind as it learns them. `finish()` records it."""

    __slots__ = ("_metrics", "_send", "function", "kind", "started", "status")

    def __init__(self, metrics: Metrics, send: Send) -> None:
        self._metrics = metrics
        self._send = send
        self.function = ""  # "" until a public function is matched (never a name from the URL)
        self.kind = "call"
        self.status = 0
        self.started = time.perf_counter()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)

    def finish(self) -> None:
        self._metrics.observe(self.function, self.kind, self.status or NO_RESPONSE, self.started)


class _FunctionStats:
    __slots__ = ("chunks", "errors", "latency", "ok", "recent")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.latency = metrics.latency.labels(name)
        self.chunks = metrics.stream_chunks.labels(name)
        self.ok = 0
        self.errors = 0
        self.recent: deque[float] = deque(maxlen=RECENT_LATENCIES)


class Metrics:
    """Every metric object of one server; `observe` is the per-call hook."""

    def __init__(self, gate: AdmissionGate) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cortex_requests",
            "Requests under /v4/ by function ('' when none matched), route kind and HTTP status",
            ["function", "kind", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cortex_request_duration_seconds",
            "Time from request to last byte, per function",
            ["function"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhooks = Counter(
            "cortex_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retrying, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.stream_chunks = Counter(
            "cortex_stream_chunks",
            "SSE chunks sent to clients, per function",
            ["function"],
            registry=self.registry,
        )
        self.runs = Gauge(
            "cortex_runs",
            "Runs in the job store by status (read at scrape time)",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(_GateCollector(gate))
        self._children: dict[tuple[str, str, int], Any] = {}
        self._functions: dict[str, _FunctionStats] = {}
        self._webhook_children = {o: self.webhooks.labels(o) for o in ("delivered", "retrying", "failed")}

    def observer(self, send: Send) -> CallObserver:
        return CallObserver(self, send)

    def observe(self, function: str, kind: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        key = (function, kind, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(function, kind, str(status))
        child.inc()
        if function:
            stats = self.function(function)
            stats.latency.observe(seconds)
            stats.recent.append(seconds)
            if status < 400:
                stats.ok += 1
            else:
                stats.errors += 1

    def function(self, name: str) -> _FunctionStats:
        stats = self._functions.get(name)
        if stats is None:
            stats = self._functions[name] = _FunctionStats(self, name)
        return stats

    def counting_encoder(self, function: str) -> Callable[[Any], bytes]:
        """encode_event that also counts the chunk (thread-safe: sync generators encode in a thread)."""
        inc = self.function(function).chunks.inc

        def encode(chunk: Any) -> bytes:
            inc()
            return encode_event(chunk)

        return encode

    def webhook_attempt(self, outcome: str) -> None:
        self._webhook_children[outcome].inc()

    def set_runs(self, counts: dict[RunStatus, int]) -> None:
        for status in RunStatus:
            self.runs.labels(status.value).set(counts.get(status, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def function_summary(self, name: str) -> dict[str, Any]:
        """Counts and latency percentiles (ms, over the last RECENT_LATENCIES calls) of a function."""
        stats = self._functions.get(name)
        if stats is None:
            return {"ok": 0, "errors": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
        ordered = sorted(stats.recent)
        return {
            "ok": stats.ok,
            "errors": stats.errors,
            **{f"p{q}_ms": _percentile_ms(ordered, q) for q in (50, 95, 99)},
        }


def _percentile_ms(ordered: list[float], q: int) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))  # nearest rank
    return round(ordered[index] * 1000, 3)


class _GateCollector(Collector):
    """Calls in flight and waiting in line, read from the AdmissionGate when scraped."""

    def __init__(self, gate: AdmissionGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("cortex_calls_in_flight", "Calls running now", value=self._gate.active)
        yield GaugeMetricFamily("cortex_calls_queued", "Calls waiting for a slot", value=self._gate.waiting)
        yield GaugeMetricFamily("cortex_concurrency_limit", "replica_concurrency", value=self._gate.limit)
