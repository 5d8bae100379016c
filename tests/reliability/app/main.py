"""Functions the reliability campaign (tests/reliability) serves: short work, slow sync calls,
finite and endless streams. Each start of `work` leaves a file in `trace`, so a scenario counts
how many times each run was started, whatever the store."""

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path


async def work(ms: float = 20.0, trace: str = "", run_id: str = "") -> dict[str, float]:
    if trace:
        Path(trace, f"{run_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}").touch()
    await asyncio.sleep(ms / 1000)
    return {"pid": os.getpid(), "ms": ms}


def block(ms: float = 50.0) -> dict[str, float]:
    """A sync call: holds a worker thread (and a replica_concurrency slot) for `ms`."""
    time.sleep(ms / 1000)
    return {"slept_ms": ms}


async def ticks(count: int = 10, interval: float = 0.1) -> AsyncIterator[dict[str, int]]:
    """A finite stream: `count` chunks, `interval` seconds apart."""
    for i in range(count):
        yield {"i": i}
        await asyncio.sleep(interval)


async def endless(interval: float = 0.5) -> AsyncIterator[dict[str, int]]:
    """A stream that goes on until its client leaves."""
    i = 0
    while True:
        yield {"i": i}
        i += 1
        await asyncio.sleep(interval)
