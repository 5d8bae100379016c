"""Bench app: the trivial functions that bench/run.py calls through `cortex serve`.

bench/raw_starlette.py imports these same functions, so both servers run identical user code.
"""

from collections.abc import AsyncIterator, Iterator


def predict(x: int) -> int:
    return x * 2


async def apredict(x: int) -> int:
    return x * 2


def stream(n: int = 1000) -> Iterator[dict[str, int]]:
    for i in range(n):
        yield {"i": i}


async def astream(n: int = 1000) -> AsyncIterator[dict[str, int]]:
    for i in range(n):
        yield {"i": i}
