"""Stream tokens as Server-Sent Events (send `Accept: text/event-stream`)."""
import asyncio
import time


def count(to: int = 5, delay: float = 0.1):
    """A sync generator: runs in a worker thread, one chunk per number."""
    for i in range(1, to + 1):
        time.sleep(delay)
        yield {"count": i}


async def tokens(prompt: str, delay: float = 0.05):
    """An async generator: streams the prompt back word by word like an LLM."""
    for word in prompt.split():
        await asyncio.sleep(delay)
        yield f"data: {word}\n\n"
