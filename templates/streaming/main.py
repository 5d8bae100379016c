"""Streaming: a generator whose chunks reach the client as Server-Sent Events while it runs.

Called with `Accept: text/event-stream`, each yielded dict is one `data: {...}` event; without
that header the chunks come back as one list.
"""

import time


def run(prompt: str, delay: float = 0.05):
    """The prompt back one word at a time, as an LLM yields tokens."""
    for word in prompt.split():
        time.sleep(delay)  # stands in for the work that produces each token
        yield {"token": word}
