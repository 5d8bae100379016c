"""Calls that take a while, for SIGTERM draining and the concurrency cap."""
import asyncio
import time


def sleep(seconds: float):
    time.sleep(seconds)
    return seconds


async def asleep(seconds: float):
    await asyncio.sleep(seconds)
    return seconds
