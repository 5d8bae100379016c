"""Async submit + completion load: closed-loop workers that submit a call, poll it until it is
done, read its result, and start the next; printed as one JSON object.

Each of `--concurrency` workers keeps one keep-alive connection (raw asyncio streams, as
bench/async_load.py) and repeats until `--duration` has passed: submit `{"x": 1}`, wait
`--poll-ms`, poll, wait, poll, ... until the call is done, then check its result is 2. Every
server gets the same polling interval, so the polls cost each the same number of requests per
task. Reports completed tasks/s, p50/p99 of submit -> result seen, polls per task, errors.

Protocols (`--style`):
- cortex: POST {prefix}/predict?async=true -> 202 {"run_id"}; GET {prefix}/runs/{id}: 202 until
  it ended, then 200 {"status": "completed", "result"}.
- starlette: the same with POST {prefix}/task/submit (bench/peers/starlette_app.py).
- bentoml: POST {prefix}/task/submit -> 200 {"task_id"}; GET {prefix}/task/status?task_id= until
  "completed", then GET {prefix}/task/get?task_id= -> the result.

    python bench/peers/task_load.py --url http://127.0.0.1:8000/v4/p-local/bench --style cortex
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for async_load
from async_load import (
    Endpoint,
    HttpError,
    _cpu_seconds,
    _run,
    build_request,
    exchange,
    parse_endpoint,
    percentile,
)

BODY = json.dumps({"x": 1}).encode()
EXPECTED = 2
STYLES = ("cortex", "starlette", "bentoml")


class TaskError(Exception):
    """A reply that does not follow the style's protocol."""


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    polls: int = 0
    errors: Counter[str] = field(default_factory=Counter)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _json(connection: Connection, endpoint: Endpoint, method: str, target: str) -> tuple[int, Any]:
    status, body = await exchange(
        *connection, build_request(endpoint, method, target, BODY if method == "POST" else b"")
    )
    try:
        return status, json.loads(body)
    except ValueError as exc:
        raise TaskError(f"{method} {target}: HTTP {status}, not JSON: {body[:100]!r}") from exc


async def submit(connection: Connection, endpoint: Endpoint, style: str, prefix: str) -> str:
    target = f"{prefix}/predict?async=true" if style == "cortex" else f"{prefix}/task/submit"
    status, payload = await _json(connection, endpoint, "POST", target)
    key = "task_id" if style == "bentoml" else "run_id"
    if status != (200 if style == "bentoml" else 202) or not isinstance(payload, dict) or key not in payload:
        raise TaskError(f"submit: HTTP {status} {str(payload)[:100]}")
    return str(payload[key])


async def poll_once(connection: Connection, endpoint: Endpoint, style: str, prefix: str, task_id: str) -> Any:
    """The result once the task is done; None while it is not."""
    if style == "bentoml":
        status, payload = await _json(connection, endpoint, "GET", f"{prefix}/task/status?task_id={task_id}")
        if status != 200 or payload.get("status") in ("failed", "canceled"):
            raise TaskError(f"status: HTTP {status} {str(payload)[:100]}")
        if payload["status"] != "completed":
            return None
        status, payload = await _json(connection, endpoint, "GET", f"{prefix}/task/get?task_id={task_id}")
        if status != 200:
            raise TaskError(f"get: HTTP {status} {str(payload)[:100]}")
        return payload.get("result")
    status, payload = await _json(connection, endpoint, "GET", f"{prefix}/runs/{task_id}")
    if status == 202:
        return None
    if status != 200 or payload.get("status") != "completed":
        raise TaskError(f"poll: HTTP {status} {str(payload)[:100]}")
    return payload.get("result")


async def worker(endpoint: Endpoint, args: argparse.Namespace, deadline: float, tally: Tally) -> None:
    connection = await asyncio.open_connection(endpoint.host, endpoint.port)
    prefix = endpoint.function_path
    try:
        while perf_counter() < deadline:
            started = perf_counter()
            try:
                task_id = await submit(connection, endpoint, args.style, prefix)
                result = None
                while result is None:
                    await asyncio.sleep(args.poll_ms / 1000)
                    tally.polls += 1
                    result = await poll_once(connection, endpoint, args.style, prefix, task_id)
            except (TaskError, HttpError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                tally.errors[str(exc).split(":")[0][:60] or type(exc).__name__] += 1
                connection[1].close()
                await asyncio.sleep(0.05)
                connection = await asyncio.open_connection(endpoint.host, endpoint.port)
                continue
            if result != EXPECTED:
                tally.errors[f"result {result!r}, expected {EXPECTED}"] += 1
            else:
                tally.latencies.append(perf_counter() - started)
    finally:
        connection[1].close()


async def run_load(args: argparse.Namespace, duration_s: float) -> dict[str, Any]:
    endpoint = parse_endpoint(args.url)
    tally = Tally()
    cpu_before = _cpu_seconds()
    started = perf_counter()
    await asyncio.gather(
        *(worker(endpoint, args, started + duration_s, tally) for _ in range(args.concurrency))
    )
    wall_s = perf_counter() - started
    latencies = sorted(tally.latencies)
    return {
        "completed": len(latencies),
        "wall_s": wall_s,
        "tasks_per_s": len(latencies) / wall_s if wall_s else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "polls_per_task": tally.polls / len(latencies) if latencies else float("nan"),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors.most_common(5)),
        "client_cpu": (_cpu_seconds() - cpu_before) / wall_s,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.warmup > 0:
        await run_load(args, args.warmup)
    return await run_load(args, args.duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, help="the functions' prefix, e.g. http://HOST/v4/p-local/bench"
    )
    parser.add_argument("--style", choices=STYLES, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(_run(main_async(args))))


if __name__ == "__main__":
    main()
