"""The bench's work written for BentoML 1.4.39, as its docs write it: one `@bentoml.service`.

At the paths cortex uses: `predict` (POST {"x": 1} -> {"run_id", "run_time_ms", "result": 2}),
`stream` (POST {"n": 1000} -> 1,000 SSE events; a generator API is streamed as text/event-stream,
and the user frames the events) and `task`, the same work as predict as a `@bentoml.task`
(POST .../task/submit -> {"task_id"}, GET .../task/status?task_id=, GET .../task/get?task_id=).
One worker, access log off, so it compares with the single-process servers.

    cd bench/peers && ../../.venv-peers/bin/bentoml serve bentoml_app:Bench --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator
from time import perf_counter
from typing import Any

import bentoml

PREFIX = "/v4/p-local/bench"


def _reply(x: int) -> dict[str, Any]:
    started = perf_counter()
    result = x * 2
    return {"run_id": str(uuid.uuid4()), "run_time_ms": (perf_counter() - started) * 1000, "result": result}


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Bench:
    @bentoml.api(route=f"{PREFIX}/predict")
    def predict(self, x: int) -> dict[str, Any]:
        return _reply(x)

    @bentoml.api(route=f"{PREFIX}/stream")
    def stream(self, n: int = 1000) -> Generator[str, None, None]:
        for i in range(n):
            yield f"data: {json.dumps({'i': i})}\n\n"

    @bentoml.task(route=f"{PREFIX}/task")
    def task(self, x: int) -> dict[str, Any]:
        return _reply(x)
