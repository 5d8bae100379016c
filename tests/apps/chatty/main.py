"""Functions that print and log while they run: their lines must carry the run id."""

import asyncio
import logging
import sys

logger = logging.getLogger("chatty")
print("imported chatty")  # outside any call: no run id


def talk(word: str):
    print(f"sync says {word}")
    print("no newline yet", end="")
    print(" - now done")
    sys.stderr.write(f"sync warns {word}\n")
    logger.info("sync logs %s", word)
    return word


async def atalk(word: str):
    print(f"async says {word}")
    logger.warning("async logs %s", word)
    await asyncio.sleep(0)
    return word


def chatter(n: int = 2):
    for i in range(n):
        print(f"chunk {i}")
        yield i
    logger.info("stream done")


def partial(word: str):
    print(f"unfinished {word}", end="")
    return word
