"""Functions for async runs: quick, slow, failing, cancellable and streaming ones."""
import asyncio
import time
from pathlib import Path


def add(a: int, b: int):
    return {"sum": a + b}


def fail(message: str = "nope"):
    raise ValueError(message)


def sleep(seconds: float, marker: str = ""):
    time.sleep(seconds)
    if marker:
        Path(marker).write_text("finished")
    return seconds


async def asleep(seconds: float, marker: str = ""):
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if marker:
            Path(marker).write_text("cancelled")
        raise
    return seconds


def count(marker: str):
    """Appends a line per execution, so a test can tell how often it ran."""
    with open(marker, "a") as file:
        file.write("ran\n")
    return "counted"


async def tokens(n: int = 5, delay: float = 0.0):
    for i in range(n):
        await asyncio.sleep(delay)
        yield {"token": i}


def words(text: str = "a b c"):
    yield from text.split()
