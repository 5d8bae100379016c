"""A long job meant for `?async=true`: the caller gets a run id at once, then polls or is called back.

Submit with `?async=true&webhookEndpoint=<url>`: the run is kept in Cortex's job store, survives a
restart, and its result is POSTed (signed) to the webhook when it ends.
"""

import time


def run(items: list[str], seconds_per_item: float = 1.0, run_id: str = ""):
    """Processes each item in turn (upper-cases it, after pretending to work for a while)."""
    processed = []
    for item in items:
        time.sleep(seconds_per_item)  # stands in for minutes of real work
        print(f"run {run_id}: processed {item!r}")
        processed.append(item.upper())
    return {"processed": processed}
