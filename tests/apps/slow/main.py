"""Slow calls: for deadlines, the concurrency cap and the waiting queue."""
import asyncio
import time


def sleep(seconds: float):
    time.sleep(seconds)
    return seconds


async def asleep(seconds: float):
    await asyncio.sleep(seconds)
    return seconds


def fast():
    return "ok"


async def drip():
    """Streams forever, one chunk every 0.1 s."""
    i = 0
    while True:
        yield {"i": i}
        i += 1
        await asyncio.sleep(0.1)
