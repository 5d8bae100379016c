"""The bench's work written for LitServe 0.2.19, as its docs write it: one `ls.LitAPI` per endpoint.

`predict` and `stream` do what bench/apps/trivial/main.py's `predict` and `stream` do, at the same
paths: POST {"x": 1} -> {"run_id", "run_time_ms", "result": 2}; POST {"n": 1000} -> 1,000 SSE
events `data: {"i": i}` (LitServe streams what `encode_response` yields, so the user frames SSE).
LitServe has no submit-and-poll API: the async scenario is n/a for it.

    .venv-peers/bin/python bench/peers/litserve_app.py --port 8000
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator
from time import perf_counter
from typing import Any

import litserve as ls

PREFIX = "/v4/p-local/bench"


class Predict(ls.LitAPI):  # type: ignore[misc]  # litserve ships no type information
    def setup(self, device: str) -> None:
        self.model = lambda x: x * 2

    # No annotation on `request`: LitServe builds its FastAPI endpoint from it (a dict would become
    # a query parameter), and reads the JSON body when it has none.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return int(request["x"])

    def predict(self, x: int) -> dict[str, Any]:
        started = perf_counter()
        result = self.model(x)
        return {
            "run_id": str(uuid.uuid4()),
            "run_time_ms": (perf_counter() - started) * 1000,
            "result": result,
        }

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class Stream(ls.LitAPI):  # type: ignore[misc]  # litserve ships no type information
    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # as Predict's
        return int(request.get("n", 1000))

    def predict(self, n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i}

    def encode_response(self, outputs: Iterator[dict[str, int]]) -> Iterator[str]:
        for output in outputs:
            yield f"data: {json.dumps(output)}\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    apis = [Predict(api_path=f"{PREFIX}/predict"), Stream(api_path=f"{PREFIX}/stream", stream=True)]
    server = ls.LitServer(apis, accelerator="cpu")
    server.run(
        host=args.host,
        port=args.port,
        generate_client_file=False,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
