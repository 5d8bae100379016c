"""Functions for tests of several replicas (or workers) sharing one run store."""

import asyncio
import os
import uuid
from pathlib import Path


def pid():
    """Which server process answered."""
    return os.getpid()


async def nap(seconds: float = 0.1, trace: str = ""):
    """With `trace` (a folder): a file per start, named after the process that started it."""
    if trace:
        Path(trace, f"{os.getpid()}-{uuid.uuid4()}").touch()
    await asyncio.sleep(seconds)
    return {"pid": os.getpid()}


async def long(seconds: float, marker: str):
    """Writes `marker` only if it runs to its end: a cancelled run must never get there."""
    Path(marker + ".started").write_text(str(os.getpid()))
    await asyncio.sleep(seconds)
    Path(marker).write_text("ran to the end")
    return "done"


async def tokens(n: int = 3):
    for i in range(n):
        yield {"token": i, "pid": os.getpid()}


def add(a: int, b: int):
    return {"sum": a + b}
