"""Generators: every kind of chunk, errors mid-stream, and a slow one that notices a gone client."""
import asyncio
import os
import time
from pathlib import Path


def words(text: str = "the quick brown fox"):
    for word in text.split():
        yield word


async def awords(text: str = "hello async world"):
    for word in text.split():
        await asyncio.sleep(0)
        yield {"word": word}


def mixed():
    yield "data: pre-framed\n\n"
    yield "event: note\ndata: custom\n\n"
    yield ": a comment\n\n"
    yield "two\nlines"
    yield {"k": [1, 2]}
    yield [1, "a"]
    yield b"data: raw bytes\n\n"


def fails_midway(after: int = 2):
    for i in range(after):
        yield {"i": i}
    raise RuntimeError("the model fell over")


async def afails_midway(after: int = 2):
    for i in range(after):
        yield {"i": i}
    raise RuntimeError("async model fell over")


def endless(marker: str):
    """Yields forever; records in `marker` when it is closed (the client left)."""
    try:
        i = 0
        while True:
            yield {"i": i}
            i += 1
            time.sleep(0.01)
    finally:
        Path(marker).write_text("closed")


async def aendless(marker: str):
    try:
        i = 0
        while True:
            yield {"i": i}
            i += 1
            await asyncio.sleep(0.01)
    finally:
        Path(marker).write_text("closed")


def count(n: int = 1000):
    for i in range(n):
        yield {"i": i}


class Opaque:
    pass


def bad_chunk():
    yield {"i": 0}
    yield Opaque()


async def abad_chunk():
    yield {"i": 0}
    yield Opaque()
