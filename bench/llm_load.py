"""Streaming chat-completion load on one OpenAI-compatible server: output tokens/s and time to first token.

The official `openai` client (AsyncOpenAI, no retries; or raw httpx streaming with `--client httpx`)
sends chat completions with `stream=True`, `temperature=0`, a fixed `max_tokens` and
`extra_body={"ignore_eos": True}`, so every request generates exactly `max_tokens` tokens;
`stream_options={"include_usage": True}` makes the server report how many it generated. For each
concurrency level, that many workers send requests back to back (a closed loop) until `--requests`
have finished; warm-up requests at that level come first and are not counted.

Per level it reports (JSON on stdout):
- `tokens_per_s`: completion tokens reported by usage, summed, / wall time from the first request
  sent to the last stream ended;
- `ttft_*_ms`: request sent (just before the client's call) -> first chunk whose delta has content;
- `itl_p50_ms`: median gap between consecutive content chunks, over all requests;
- `chunks_per_request`: content chunks per request (a chunk can carry more than one token, and a
  token may decode to no text yet, so this is not the token count);
- `client_cpu`: this process's CPU time / wall time (near 100% would make the client the limit);
- `server_cpu_ms_per_token`: CPU time of each server process (from /proc, pids given with
  `--server-pid role=PID`) per completion token, so per-token overhead of the front end shows;
- `cpu_probe_ms`: a fixed pure-Python loop timed on the idle server just before the level, to
  tell the machine's drift from the server's;
- `errors`: requests that failed, or did not end with `finish_reason` "length" and
  `completion_tokens == max_tokens`.

    python bench/llm_load.py --base-url http://127.0.0.1:8000/v1 --model tiny-llama --concurrency 1,16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

# "hi" makes this tiny model emit text on ~90% of its tokens (other prompts: 40-70%), so nearly
# every token is a chunk the front end has to frame and send: the harder case for it.
MESSAGES = [{"role": "user", "content": "hi"}]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    ttft_s: float = float("nan")
    total_s: float = float("nan")
    completion_tokens: int = 0
    content_chunks: int = 0
    gaps_s: list[float] = field(default_factory=list)
    error: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url", required=True, help="the client's base_url (…/v1, or a cortex function)"
    )
    parser.add_argument("--model", required=True, help="the model name sent in each request")
    parser.add_argument("--concurrency", default="1,16", help="comma list of streams in flight")
    parser.add_argument(
        "--requests",
        default="",
        help="comma list of measured requests per level (default: 8 x concurrency, min 8)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="warm-up waves (of `concurrency` requests) per level"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--client",
        choices=["openai", "httpx"],
        default="openai",
        help="the official AsyncOpenAI client, or raw httpx streaming (less client CPU per chunk)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument(
        "--server-pid",
        action="append",
        default=[],
        metavar="ROLE=PID",
        help="a server process to read CPU time of",
    )
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.concurrency.split(",")]
    counts = (
        [int(x) for x in args.requests.split(",")] if args.requests else [max(8, 8 * c) for c in args.levels]
    )
    if len(counts) != len(args.levels):
        parser.error("--requests needs one count per --concurrency level")
    args.counts = counts
    args.pids = {role: int(pid) for role, _, pid in (item.partition("=") for item in args.server_pid)}
    return args


class Recorder:
    """Times one streamed request: first content, gaps between contents, finish reason, usage."""

    def __init__(self) -> None:
        self.sample = Sample()
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.last: float | None = None

    def content(self, text: str | None) -> None:
        if not text:
            return
        now = time.perf_counter()
        if self.last is None:
            self.sample.ttft_s = now - self.started
        else:
            self.sample.gaps_s.append(now - self.last)
        self.last = now
        self.sample.content_chunks += 1

    def finished(self, max_tokens: int) -> Sample:
        sample = self.sample
        sample.total_s = time.perf_counter() - self.started
        if self.finish_reason != "length" or sample.completion_tokens != max_tokens or self.last is None:
            sample.error = (
                f"finish_reason={self.finish_reason!r}, completion_tokens={sample.completion_tokens} "
                f"(want 'length', {max_tokens}), content chunks={sample.content_chunks}"
            )
        return sample

    def failed(self, exc: BaseException) -> Sample:
        self.sample.error = f"{type(exc).__name__}: {exc}"[:300]
        return self.sample


def request_body(model: str, max_tokens: int) -> dict[str, Any]:
    """The fields both clients send (the openai client puts extra_body's ignore_eos at the top level)."""
    return {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one_request_openai(client: AsyncOpenAI, model: str, max_tokens: int) -> Sample:
    """One stream through the official client (SSE parsing and a pydantic model per chunk)."""
    record = Recorder()
    try:
        stream = await client.chat.completions.create(
            **request_body(model, max_tokens), extra_body={"ignore_eos": True}
        )
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                record.content(choice.delta.content)
                record.finish_reason = choice.finish_reason or record.finish_reason
            if chunk.usage is not None:
                record.sample.completion_tokens = chunk.usage.completion_tokens
    except Exception as exc:  # counted, never fatal: the report shows errors
        return record.failed(exc)
    return record.finished(max_tokens)


async def one_request_httpx(client: Any, model: str, max_tokens: int) -> Sample:
    """One stream read with raw httpx: `data:` lines, json.loads, nothing else (a lighter client)."""
    record = Recorder()
    body = {**request_body(model, max_tokens), "ignore_eos": True}
    try:
        async with client.stream("POST", "chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"error chunk: {chunk['error']}")
                if chunk.get("choices"):
                    choice = chunk["choices"][0]
                    record.content(choice.get("delta", {}).get("content"))
                    record.finish_reason = choice.get("finish_reason") or record.finish_reason
                if chunk.get("usage"):
                    record.sample.completion_tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:
        return record.failed(exc)
    return record.finished(max_tokens)


async def closed_loop(client: Any, args: argparse.Namespace, concurrency: int, total: int) -> list[Sample]:
    """`concurrency` workers, each sending its next request as soon as its last one ended."""
    samples: list[Sample] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            samples.append(await args.one_request(client, args.model, args.max_tokens))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), from /proc; NaN when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def cpu_probe_ms(rounds: int = 5) -> float:
    """Best of `rounds` timings of a fixed pure-Python loop: how fast this machine is right now (a
    drifting figure across servers means the machine, not the server, changed speed)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def measure_level(
    client: Any, args: argparse.Namespace, concurrency: int, total: int
) -> dict[str, Any]:
    warm = await closed_loop(client, args, concurrency, args.warmup * concurrency)
    probe_ms = cpu_probe_ms()
    cpu_before = {role: cpu_seconds(pid) for role, pid in args.pids.items()}
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    samples = await closed_loop(client, args, concurrency, total)
    wall = time.perf_counter() - started
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_after = {role: cpu_seconds(pid) for role, pid in args.pids.items()}
    good = [s for s in samples if not s.error]
    tokens = sum(s.completion_tokens for s in good)
    ttfts = [s.ttft_s * 1000 for s in good]
    gaps = [gap * 1000 for s in good for gap in s.gaps_s]
    client_cpu = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    errors = [s.error for s in samples if s.error] + [f"warm-up: {s.error}" for s in warm if s.error]
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "completed": len(good),
        "max_tokens": args.max_tokens,
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall if wall else float("nan"),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p90_ms": percentile(ttfts, 0.9),
        "ttft_min_ms": min(ttfts, default=float("nan")),
        "latency_p50_ms": percentile([s.total_s * 1000 for s in good], 0.5),
        "itl_p50_ms": percentile(gaps, 0.5),
        "itl_p99_ms": percentile(gaps, 0.99),
        "chunks_per_request": statistics.mean(s.content_chunks for s in good) if good else float("nan"),
        "client_cpu": client_cpu / wall if wall else float("nan"),
        "cpu_probe_ms": probe_ms,
        "server_cpu_share": {role: (cpu_after[role] - cpu_before[role]) / wall for role in args.pids},
        "server_cpu_ms_per_token": {
            role: 1000 * (cpu_after[role] - cpu_before[role]) / tokens if tokens else float("nan")
            for role in args.pids
        },
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.client == "openai":
        client: Any = AsyncOpenAI(
            base_url=args.base_url, api_key="unused", max_retries=0, timeout=args.timeout
        )
        args.one_request = one_request_openai
    else:
        import httpx

        limits = httpx.Limits(max_connections=max(args.levels) + 4)
        client = httpx.AsyncClient(
            base_url=args.base_url.rstrip("/") + "/", timeout=args.timeout, limits=limits
        )
        args.one_request = one_request_httpx
    async with client:
        levels = []
        for concurrency, total in zip(args.levels, args.counts, strict=True):
            levels.append(await measure_level(client, args, concurrency, total))
            level = levels[-1]
            print(
                f"    {concurrency:>2} stream(s): {level['tokens_per_s']:,.0f} tok/s, TTFT p50 "
                f"{level['ttft_p50_ms']:.1f} ms, ITL p50 {level['itl_p50_ms']:.2f} ms, "
                f"{level['completed']}/{level['requests']} ok, client CPU {level['client_cpu']:.0%}",
                file=sys.stderr,
                flush=True,
            )
    return {"base_url": args.base_url, "client": args.client, "levels": levels}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
