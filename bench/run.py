"""Benchmark `cortex serve` against raw Starlette and bare ASGI in one run of interleaved rounds.

Each round starts every variant as its own subprocess (server pinned to CPU 0, load generator to
CPU 1), sanity-checks every function once, then loads it: wrk for request/response (req/s,
p50/p99), bench/sse_load.py for streams (events/s). Rounds interleave the variants (A B C A B C
...) and the report gives medians over rounds and the medians of the per-round ratios to raw
Starlette (the target) and to bare ASGI (the harder ceiling). On cortex, the same server then
runs async runs of the same sync function (bench/async_runs.py): submits/s and completed runs/s,
each as a ratio to that server's sync calls/s in the same round.

    .venv/bin/python bench/run.py                       # 3 rounds of 10 s, writes the docs
    .venv/bin/python bench/run.py --quick --variants raw   # smoke test of the harness
    .venv/bin/python bench/run.py --quick --only async --no-docs   # async runs on cortex only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import async_runs
import httpx
import report
from scenarios import ASYNC_SCENARIOS, SCENARIOS, SYNC_REFERENCE, SanityError, Scenario, check
from servers import (
    BENCH_DIR,
    LOAD_CPU,
    REPO_DIR,
    SERVER_CPU,
    VARIANTS,
    Server,
    ServerStartError,
    Variant,
    can_pin,
    pinned,
    serving,
)
from wrk_load import WrkError, require_wrk, run_wrk, wrk_version

RESULTS_PATH = BENCH_DIR / "results" / "latest.json"
QUICK_RESULTS_PATH = BENCH_DIR / "results" / "quick.json"
DOCS_PATH = REPO_DIR / "docs" / "benchmarks.md"
BUSY_CPU = 0.10
PACKAGES = ("starlette", "uvicorn", "uvloop", "httptools", "pydantic", "httpx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load")
    parser.add_argument(
        "--only",
        choices=["rr", "sse", "async"],
        help="request/response, SSE, or async runs only (async: cortex, with its sync predict as reference)",
    )
    parser.add_argument("--variants", default="raw,asgi,cortex", help="comma list of raw, asgi, cortex")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--streams", type=int, default=16, help="concurrent SSE streams")
    parser.add_argument("--events", type=int, default=1000, help="events per SSE stream")
    parser.add_argument("--async-runs", type=int, default=2000, help="runs submitted end to end")
    parser.add_argument("--async-concurrency", type=int, default=64, help="end-to-end submits in flight")
    parser.add_argument("--async-timeout", type=float, default=120.0, help="seconds for every run to end")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 1 s warm-up")
    parser.add_argument("--no-docs", action="store_true", help=f"do not rewrite {DOCS_PATH.name}")
    parser.add_argument("--output", type=Path, help=f"default {RESULTS_PATH.name}")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    args.output = args.output or (QUICK_RESULTS_PATH if args.quick else RESULTS_PATH)
    unknown = set(args.variants.split(",")) - VARIANTS.keys()
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    if args.only == "async":
        # Only servers with a run store have async runs; the baselines would add nothing.
        args.variants = ",".join(name for name in args.variants.split(",") if VARIANTS[name].async_runs)
        if not args.variants:
            parser.error("--only async needs a variant with async runs: cortex")
    return args


def selected_scenarios(args: argparse.Namespace) -> list[Scenario]:
    if args.only == "async":
        chosen = [SYNC_REFERENCE, *ASYNC_SCENARIOS]
    else:
        chosen = [s for s in SCENARIOS if args.only is None or s.kind == args.only]
    return [dataclasses.replace(s, body={"n": args.events}) if s.kind == "sse" else s for s in chosen]


def runs_on(variant: Variant, scenario: Scenario) -> bool:
    """Async runs need a run store: the baselines have none."""
    return variant.async_runs or not scenario.is_async


def machine_meta(versions: dict[str, str]) -> dict[str, Any]:
    """What every bench records of the run and the machine, before its own settings."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "versions": versions,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "cpu_busy_at_start": _cpu_busy(),
        "load_average_at_start": _load_average(),
    }


def collect_meta(args: argparse.Namespace) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "cortex": _cortex_version()}
    versions.update({name: _package_version(name) for name in PACKAGES})
    if args.only != "sse":
        versions["wrk"] = wrk_version()
    with_async = args.only in (None, "async") and any(
        VARIANTS[v].async_runs for v in args.variants.split(",")
    )
    return {
        **machine_meta(versions),
        "pinning": f"server CPU {SERVER_CPU}, load CPU {LOAD_CPU}" if can_pin() else "none",
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wrk": f"-t1 -c{args.connections} --latency",
            "sse_streams": args.streams,
            "sse_events_per_stream": args.events,
            "async_runs": args.async_runs if with_async else None,
            "async_concurrency": args.async_concurrency if with_async else None,
            "async_timeout_s": args.async_timeout if with_async else None,
            "only": args.only,
            "variants": args.variants.split(","),
        },
        "disk_probe": async_runs.probe_disk() if with_async else None,
    }


def _cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over `seconds`, from /proc/stat (None where there is none)."""
    try:
        first = _cpu_times()
        time.sleep(seconds)
        second = _cpu_times()
    except (OSError, ValueError):
        return None
    idle, total = second[0] - first[0], second[1] - first[1]
    return 1 - idle / total if total else None


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of the aggregate `cpu` line of /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def _load_average() -> list[float]:
    """1/5/15-minute load averages: well above 0 before a run means the machine is not idle."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cortex_version() -> str:
    init = (REPO_DIR / "cortex" / "__init__.py").read_text()
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", init)
    return found.group(1) if found else "unknown"


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_DIR, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_sse_load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH_DIR / "sse_load.py"),
        f"--url={url}",
        f"--events={args.events}",
        f"--concurrency={args.streams}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
    ]
    timeout = args.duration + args.warmup + 120
    done = subprocess.run(pinned(command, LOAD_CPU), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"sse_load.py exited with code {done.returncode}: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(server: Server, scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    """Sanity-check one function, load it, check it again; the result dict, or {"error": why}."""
    url = f"{server.base_url}{server.variant.prefix}/{scenario.function}"
    problem = sanity_problem(url, scenario)
    if problem:
        return {"error": f"sanity check failed: {problem}"}
    if scenario.is_async:
        return measure_async(server, url, scenario, args)
    try:
        result = load(url, scenario, args)
    except (WrkError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": f"load failed: {exc}"}
    if server.process.poll() is not None:
        return {"error": f"server exited with code {server.process.returncode} under load"}
    if not result["requests" if scenario.kind == "rr" else "events"]:
        return {"error": f"nothing completed in {args.duration:g} s of load (server stuck?)", **result}
    problem = sanity_problem(url, scenario)
    if problem:
        return {"error": f"sanity check after load failed: {problem}", **result}
    return result


def measure_async(server: Server, url: str, scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    """Async runs after their sanity check (one run polled to `result: 2`). No check after the
    submit load: a new run would wait behind the backlog that load leaves."""
    try:
        if scenario.kind == "async_e2e":
            result = async_runs.run_e2e(url, args)
        else:
            result = async_runs.run_submit(server, url, args)
    except (WrkError, RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return {"error": f"load failed: {exc}"}
    if server.process.poll() is not None:
        return {"error": f"server exited with code {server.process.returncode} under load"}
    if scenario.kind == "async_e2e":
        problem = async_runs.e2e_problem(result, args)
    else:
        problem = "" if result["requests"] else f"nothing completed in {args.duration:g} s of load"
    return {"error": problem, **result} if problem else result


def sanity_problem(url: str, scenario: Scenario) -> str:
    """Why one request to `url` did not get the expected 200 reply ("" when it did)."""
    try:
        check(url, scenario)
    except (SanityError, httpx.HTTPError) as exc:
        return str(exc) or type(exc).__name__
    return ""


def load(url: str, scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    if scenario.kind == "sse":
        return run_sse_load(url, args)
    run_wrk(url, args.warmup, args.connections)
    return run_wrk(url, args.duration, args.connections).to_dict()


def describe(variant: Variant, scenario: Scenario, result: dict[str, Any]) -> str:
    head = f"  {variant.label} — {scenario.label}:"
    if "error" in result:
        return f"{head} FAILED: {result['error'].splitlines()[0]}"
    if scenario.is_async:
        return f"{head} {describe_async(scenario, result)}"
    if scenario.kind == "rr":
        errors = f", {result['errors']} ERRORS" if result["errors"] else ""
        return (
            f"{head} {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms{errors}"
        )
    bad = f", {result['bad_streams']} BAD STREAMS" if result["bad_streams"] else ""
    return (
        f"{head} {result['events_per_s']:,.0f} events/s, first event p50 "
        f"{result['first_event_p50_ms']:.1f} ms, client CPU {result['client_cpu']:.0%}{bad}"
    )


def describe_async(scenario: Scenario, result: dict[str, Any]) -> str:
    errors = f", {result['errors']} ERRORS" if result["errors"] else ""
    if scenario.kind == "async_e2e":
        return (
            f"{result['runs_per_s']:,.0f} runs/s ({result['completed']:,} in {result['wall_s']:.2f} s, "
            f"submitted at {result['submit_per_s']:,.0f}/s), run latency p50 "
            f"{result['latency_p50_ms']:.0f} ms, p99 {result['latency_p99_ms']:.0f} ms, "
            f"client CPU {result['client_cpu']:.0%}{errors}"
        )
    return (
        f"{result['rps']:,.0f} 202/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms; "
        f"queue {result['backlog_before']:,} -> {result['backlog_after']:,} runs{errors}"
    )


def bench_variant(variant: Variant, scenarios: list[Scenario], args: argparse.Namespace) -> dict[str, Any]:
    """Start one variant, measure every scenario on it, stop it."""
    try:
        with serving(variant) as server:
            outcome: dict[str, Any] = {"ready_s": server.ready_s, "scenarios": {}}
            for scenario in (s for s in scenarios if runs_on(variant, s)):
                result = measure(server, scenario, args)
                log(describe(variant, scenario, result))
                outcome["scenarios"][scenario.key] = result
            return outcome
    except ServerStartError as exc:
        log(f"  {variant.label}: FAILED TO START: {exc}")
        return {"error": f"failed to start: {exc}"}


def run_rounds(args: argparse.Namespace, scenarios: list[Scenario]) -> list[dict[str, Any]]:
    variants = [VARIANTS[name] for name in args.variants.split(",")]
    rounds = []
    for number in range(1, args.rounds + 1):
        log(f"round {number}/{args.rounds}")
        outcomes = {v.name: bench_variant(v, scenarios, args) for v in variants}
        rounds.append({"round": number, "variants": outcomes})
    return rounds


def summarise(
    rounds: list[dict[str, Any]], scenarios: list[Scenario], variants: list[str]
) -> list[tuple[Scenario, dict[str, Any]]]:
    summaries = []
    for scenario in scenarios:
        for name in variants:
            if not runs_on(VARIANTS[name], scenario):
                continue
            if scenario.is_async:
                summaries.append((scenario, report.summarise_async(rounds, name, scenario, SYNC_REFERENCE)))
            else:
                summaries.append((scenario, report.summarise(rounds, name, scenario)))
    return summaries


def _format_busy(meta: dict[str, Any]) -> str:
    busy = meta["cpu_busy_at_start"]
    return "?" if busy is None else f"{busy:.0%}"


def _format_load(meta: dict[str, Any]) -> str:
    return " / ".join(f"{value:.2f}" for value in meta["load_average_at_start"]) or "unknown"


def _ratio_note(settings: dict[str, Any]) -> str:
    if settings["only"] == "async":
        return "Ratios are medians of per-round ratios to the same server's sync calls."
    note = (
        "Ratios are medians of per-round ratios to raw Starlette (the target) and, when it ran, "
        "to bare ASGI (a hand-written ASGI callable: the harder ceiling)"
    )
    return note + ("; async runs, to the same server's sync calls." if settings["async_runs"] else ".")


def render(meta: dict[str, Any], summaries: list[tuple[Scenario, dict[str, Any]]]) -> str:
    labels = {name: variant.label for name, variant in VARIANTS.items()}
    settings, versions = meta["settings"], meta["versions"]
    parts = [
        f"## Results ({meta['date']}, commit {meta['git_commit']})",
        f"{settings['rounds']} interleaved round(s) of {settings['duration_s']:g} s after "
        f"{settings['warmup_s']:g} s of warm-up; {meta['cpu_count']} CPUs ({meta['cpu_model']}); "
        f"pinning: {meta['pinning']}; CPUs {_format_busy(meta)} busy just before the run, "
        f"load average {_format_load(meta)}. {_ratio_note(settings)}",
        ", ".join(f"{name} {version}" for name, version in versions.items()) + ".",
    ]
    rr = [(s, x) for s, x in summaries if s.kind == "rr"]
    sse = [(s, x) for s, x in summaries if s.kind == "sse"]
    runs = [(s, x) for s, x in summaries if s.is_async]
    if rr and settings["only"] != "async":
        parts += [f"### Request/response (wrk {settings['wrk']})", report.rr_table(rr, labels)]
    if sse:
        streams, events = settings["sse_streams"], settings["sse_events_per_stream"]
        title = f"### SSE ({streams} concurrent streams of {events:,} events)"
        parts += [title, report.sse_table(sse, labels)]
    if runs:
        reference = [(s, x) for s, x in rr if s.key == SYNC_REFERENCE.key]
        parts += report.async_section(reference + runs, labels, meta)
    notes = report.failure_notes([x for _, x in summaries], labels)
    if notes:
        parts += ["### Failures", notes]
    return "\n\n".join(parts) + "\n"


def jsonable(value: Any) -> Any:
    """`value` with NaN (a median of nothing) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def has_failures(summaries: list[tuple[Scenario, dict[str, Any]]]) -> bool:
    return any(x["rounds_failed"] or x["load_errors"] for _, x in summaries)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = selected_scenarios(args)
    if any(s.kind == "rr" for s in scenarios):
        try:
            require_wrk()
        except WrkError as exc:
            log(str(exc))
            return 2
    meta = collect_meta(args)
    busy = meta["cpu_busy_at_start"]
    if busy is not None and busy > BUSY_CPU:
        log(f"note: the CPUs were {busy:.0%} busy before the run: other work shares the machine")
    rounds = run_rounds(args, scenarios)
    summaries = summarise(rounds, scenarios, args.variants.split(","))
    markdown = render(meta, summaries)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta["load_average_at_end"] = _load_average()
    payload = {**meta, "rounds": rounds, "summary": [x for _, x in summaries]}
    args.output.write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    print(markdown)
    if not (args.quick or args.no_docs):
        report.write_docs_section(DOCS_PATH, markdown)
        log(f"wrote {args.output} and {DOCS_PATH}")
    return 1 if has_failures(summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
