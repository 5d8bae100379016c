"""Cortex against its peers: the same work through cortex, raw Starlette, LitServe and BentoML.

Rounds interleave the servers (raw Starlette, cortex, LitServe, BentoML, then the custom-runtime
proxy pair; again in the next round), each started fresh and pinned to CPU 0, the load generators
to CPU 1. Per server and round:

- cold start: process spawn to the first 200 of `POST .../predict {"x": 1}` (bytecode compiled
  beforehand), then the summed RSS and PSS of its process tree after 1,000 such requests;
- sync JSON: wrk -c64 on `predict` (bench/wrk_load.py); SSE: 16 streams of 1,000 events
  (bench/sse_load.py); async submit + completion (bench/peers/task_load.py);
- latency against 1, 16, 64 and 256 concurrent wrk connections on `predict`.

The proxy pair is `cortex serve` on tests/apps/custom_asgi, its app called directly (the ceiling)
and through cortex (bench/proxy.py's machinery). The LLM chat stream is bench/llm.py, run in
.venv-ml after the rounds (cortex.vllm against vLLM's own OpenAI server). LitServe and BentoML
run from .venv-peers, which this script builds (pinned versions). Ratios are per round to the
ceiling of that scenario; the report gives their medians. A server or scenario that fails is
recorded as an error in its cell; the others go on.

    .venv/bin/python bench/peers_run.py           # 3 rounds + LLM: bench/results/peers.json, docs, plots
    .venv/bin/python bench/peers_run.py --quick   # 1 short round, quick LLM: bench/results/peers-quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import peers_report
import proxy
from run import _cortex_version, _cpu_busy, _cpu_model, _git_commit, _load_average, jsonable, run_sse_load
from servers import LOAD_CPU, MAX_QUEUE, REPO_DIR, SERVER_CPU, can_pin, cortex_cli, free_port, pinned
from wrk_load import WrkError, run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
APP_DIR = BENCH_DIR / "apps" / "trivial"
PEERS_VENV = REPO_DIR / ".venv-peers"
ML_PYTHON = REPO_DIR / ".venv-ml" / "bin" / "python"
RESULTS_PATH = BENCH_DIR / "results" / "peers.json"
QUICK_RESULTS_PATH = BENCH_DIR / "results" / "peers-quick.json"
PREFIX = "/v4/p-local/bench"
# The peers' pins: the versions /work/shared/BASELINE.md measured; matplotlib draws the plots.
PEER_REQUIREMENTS = ("litserve==0.2.19", "bentoml==1.4.39", "matplotlib==3.11.2", "uvloop", "httptools")
PEER_PACKAGES = (
    "litserve",
    "bentoml",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "matplotlib",
)
CORTEX_PACKAGES = ("starlette", "uvicorn", "uvloop", "httptools", "pydantic", "httpx")
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
RSS_REQUESTS = 1000
CONCURRENCY_LEVELS = (1, 16, 64, 256)
SSE_EVENTS = 1000


class BenchError(Exception):
    """A server did not start, answered wrongly, or a load generator failed."""


@dataclass(frozen=True)
class Peer:
    """A server under test: how to start it, and which scenarios it has (None: n/a, why)."""

    name: str
    label: str
    task_style: str | None  # bench/peers/task_load.py --style, None when it has no async API
    na: dict[str, str] = field(default_factory=dict)  # scenario -> why it is n/a

    def command(self, port: int, work: Path) -> tuple[list[str], Path, dict[str, str]]:
        """Command, working directory and extra environment of one start."""
        peers_python = str(PEERS_VENV / "bin" / "python")
        if self.name == "raw":
            return [sys.executable, str(PEERS_DIR / "starlette_app.py"), "--port", str(port)], REPO_DIR, {}
        if self.name == "litserve":
            return [peers_python, str(PEERS_DIR / "litserve_app.py"), "--port", str(port)], REPO_DIR, {}
        if self.name == "bentoml":
            bentoml = [str(PEERS_VENV / "bin" / "bentoml"), "serve", "bentoml_app:Bench"]
            # Its own home per start: the task result store (SQLite) lives there.
            return (
                [*bentoml, "--host", "127.0.0.1", "--port", str(port)],
                PEERS_DIR,
                {"BENTOML_HOME": str(work)},
            )
        store = f"sqlite:///{work / 'runs.db'}"
        command = [*cortex_cli(), "serve", str(APP_DIR), "--host", "127.0.0.1", "--port", str(port)]
        env = {
            "CORTEX_PROJECT_ID": "p-local",
            "CORTEX_MAX_QUEUE": str(MAX_QUEUE),
            "CORTEX_WEBHOOK_SECRET": _SECRET,
        }
        return [*command, "--store", store], REPO_DIR, env


_SECRET = "whsec_" + "A" * 43 + "="  # given, so cortex writes no secret file into bench/apps/trivial
NO_TASKS = "LitServe 0.2.19 has no submit-and-poll (task/queue) API"
PEERS = {
    "raw": Peer("raw", "raw Starlette (ceiling)", "starlette"),
    "cortex": Peer("cortex", "cortex serve", "cortex"),
    "litserve": Peer("litserve", "LitServe 0.2.19", None, {"async": NO_TASKS}),
    "bentoml": Peer("bentoml", "BentoML 1.4.39", "bentoml"),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of measured load per scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before it")
    parser.add_argument("--sweep-duration", type=float, default=4.0, help="seconds per concurrency level")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for the sync JSON call")
    parser.add_argument("--streams", type=int, default=16, help="concurrent SSE streams")
    parser.add_argument("--tasks", type=int, default=16, help="concurrent submit+poll clients")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="interval between polls of one task")
    parser.add_argument("--peers", default=",".join(PEERS), help="servers, in their order within a round")
    parser.add_argument("--no-proxy", action="store_true", help="skip the custom-runtime proxy pair")
    parser.add_argument("--llm", choices=("run", "skip"), default="run", help="run bench/llm.py in .venv-ml")
    parser.add_argument("--llm-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, quick LLM, no docs")
    parser.add_argument(
        "--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md or the plots"
    )
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--render", type=Path, help="summarise, plot and report this results file; measure nothing"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.sweep_duration, args.llm_rounds = 1, 3.0, 1.0, 2.0, 1
    args.output = args.output or (QUICK_RESULTS_PATH if args.quick else RESULTS_PATH)
    args.events, args.peer_names = SSE_EVENTS, args.peers.split(",")
    unknown = set(args.peer_names) - PEERS.keys()
    if unknown:
        parser.error(f"unknown peer(s) {sorted(unknown)}; choose from {', '.join(PEERS)}")
    return args


# --- the peers' virtualenv ------------------------------------------------------------------------


def ensure_peers_venv() -> dict[str, str]:
    """Build .venv-peers with the pinned peers when it is missing; return its package versions."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        log(f"building {PEERS_VENV.name}: {' '.join(PEER_REQUIREMENTS)}")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    script = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(python), "-c", script, *PEER_PACKAGES], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(done.stdout)
    pins = dict(requirement.split("==") for requirement in PEER_REQUIREMENTS if "==" in requirement)
    wrong = {name: versions.get(name) for name, pin in pins.items() if versions.get(name) != pin}
    if wrong:
        raise BenchError(f"{PEERS_VENV.name} has {wrong}, expected {pins}: delete it and run again")
    return versions


def precompile() -> None:
    """Write bytecode for cortex and bench (PYTHONDONTWRITEBYTECODE may be set): cold starts then
    read .pyc files, as an image built with compileall does. The venvs' packages were compiled by pip."""
    for target in ("cortex", "bench"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO_DIR / target)], check=False)


# --- starting and stopping -----------------------------------------------------------------------


@dataclass
class Running:
    peer: Peer
    process: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    work: Path
    spawned_at: float

    def url(self, function: str) -> str:
        return f"{self.base}{PREFIX}/{function}"

    def log_tail(self, lines: int = 12) -> str:
        text = (self.work / "server.log").read_text(errors="replace").strip()
        return "\n".join(line[:300] for line in text.splitlines()[-lines:]) or "(no output)"


def start(peer: Peer) -> Running:
    work = Path(tempfile.mkdtemp(prefix=f"bench-peers-{peer.name}-"))
    port = free_port()
    command, cwd, extra = peer.command(port, work)
    env = {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}
    with (work / "server.log").open("wb") as out:
        spawned_at = time.perf_counter()
        process = subprocess.Popen(
            pinned(command, SERVER_CPU),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Running(peer, process, f"http://127.0.0.1:{port}", work, spawned_at)


def wait_first_200(server: Running) -> float:
    """Poll POST predict until it answers 200 with the expected body; seconds since the spawn."""
    deadline = server.spawned_at + READY_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if server.process.poll() is not None:
                raise BenchError(f"exited with code {server.process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                response = client.post(server.url("predict"), json={"x": 1})
                if response.status_code == 200:
                    at = time.perf_counter()
                    check_call(response)
                    return at - server.spawned_at
            time.sleep(0.01)
    raise BenchError(f"no 200 from POST predict within {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def stop(server: Running) -> None:
    """SIGTERM to the server's whole process group (LitServe and BentoML start workers), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"  {server.peer.label} did not stop within {STOP_TIMEOUT_S:.0f} s; killing its group")
    time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)  # leftovers of the group (workers)
    server.process.wait()
    subprocess.run(["rm", "-rf", str(server.work)], check=False)


@contextlib.contextmanager
def serving(peer: Peer) -> Iterator[tuple[Running, float]]:
    server = start(peer)
    try:
        yield server, wait_first_200(server)
    finally:
        stop(server)


# --- checks --------------------------------------------------------------------------------------


def check_call(response: httpx.Response) -> None:
    body = response.json()
    if not (isinstance(body, dict) and body.get("result") == 2 and {"run_id", "run_time_ms"} <= body.keys()):
        raise BenchError(
            f"POST predict: expected {{run_id, run_time_ms, result: 2}}, got {response.text[:200]!r}"
        )


def check_stream(url: str) -> None:
    response = httpx.post(url, json={"n": SSE_EVENTS}, headers={"accept": "text/event-stream"}, timeout=30)
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    if (
        response.status_code != 200
        or len(data) != SSE_EVENTS
        or json.loads(data[-1]) != {"i": SSE_EVENTS - 1}
    ):
        raise BenchError(
            f"POST stream: HTTP {response.status_code}, {len(data)} events: {response.text[:120]!r}"
        )


# --- measures ------------------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    """root and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(parents.get(pid, []))
    return pids


def _kb(path: Path, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def memory(root: int) -> dict[str, Any]:
    """Summed RSS (shared pages counted once per process) and PSS (shared pages split) of the tree."""
    pids = tree_pids(root)
    rss = sum(_kb(Path(f"/proc/{pid}/status"), "VmRSS:") for pid in pids)
    pss = sum(_kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") for pid in pids)
    return {"processes": len(pids), "rss_mb": rss / 1024, "pss_mb": pss / 1024}


def measure_memory(server: Running) -> dict[str, Any]:
    with httpx.Client(timeout=30) as client:
        for _ in range(RSS_REQUESTS):
            response = client.post(server.url("predict"), json={"x": 1})
            if response.status_code != 200:
                raise BenchError(
                    f"POST predict answered {response.status_code} during the {RSS_REQUESTS} requests"
                )
    return memory(server.process.pid)


def wrk_result(url: str, duration: float, connections: int) -> dict[str, Any]:
    result = run_wrk(url, duration, connections=connections, threads=2 if connections > 64 else 1).to_dict()
    if not result["requests"]:
        raise BenchError("wrk completed no request")
    return result


def run_tasks(server: Running, args: argparse.Namespace) -> dict[str, Any]:
    assert server.peer.task_style is not None
    command = [
        sys.executable,
        str(PEERS_DIR / "task_load.py"),
        f"--url={server.base}{PREFIX}",
        f"--style={server.peer.task_style}",
        f"--concurrency={args.tasks}",
        f"--poll-ms={args.poll_ms}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
    ]
    timeout = args.duration + args.warmup + 120
    done = subprocess.run(pinned(command, LOAD_CPU), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"task_load.py exited with code {done.returncode}: {done.stderr[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if not result["completed"]:
        raise BenchError(f"no task completed: {result['error_kinds']}")
    return result


def _attempt(what: str, label: str, fn: Any, *fn_args: Any) -> dict[str, Any]:
    """fn(*fn_args), or {"error": why}: one cell's failure never stops the run."""
    try:
        result: dict[str, Any] = fn(*fn_args)
    except (
        BenchError,
        WrkError,
        RuntimeError,
        OSError,
        ValueError,
        KeyError,
        subprocess.TimeoutExpired,
    ) as exc:
        log(f"  {label} {what}: FAILED {str(exc)[:300]}")
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    return result


def bench_peer(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    outcome: dict[str, Any] = {"scenarios": {}, "sweep": {}}
    try:
        with serving(peer) as (server, cold_start_s):
            outcome["cold_start_s"] = cold_start_s
            outcome["memory"] = _attempt("memory", peer.label, measure_memory, server)
            log(
                f"  {peer.label}: first 200 after {cold_start_s:.2f} s; {_describe_memory(outcome['memory'])}"
            )
            scenarios = outcome["scenarios"]
            scenarios["json"] = _attempt("sync JSON", peer.label, _json_load, server, args)
            scenarios["sse"] = _attempt("SSE", peer.label, _sse_load, server, args)
            if peer.task_style is not None:
                scenarios["async"] = _attempt("async", peer.label, run_tasks, server, args)
            for key, value in scenarios.items():
                log(f"  {peer.label} {key}: {_describe(value)}")
            for level in CONCURRENCY_LEVELS:
                result = _attempt(
                    f"-c{level}", peer.label, wrk_result, server.url("predict"), args.sweep_duration, level
                )
                outcome["sweep"][str(level)] = result
            log(
                f"  {peer.label} sweep: "
                + ", ".join(f"c{c} {_describe(r)}" for c, r in outcome["sweep"].items())
            )
            if server.process.poll() is not None:
                outcome["error"] = f"exited with code {server.process.returncode} during the round"
    except (BenchError, OSError, httpx.HTTPError, ValueError) as exc:
        log(f"  {peer.label}: FAILED {str(exc)[:400]}")
        outcome["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
    return outcome


def _json_load(server: Running, args: argparse.Namespace) -> dict[str, Any]:
    url = server.url("predict")
    if args.warmup > 0:
        run_wrk(url, args.warmup, connections=args.connections)
    result = wrk_result(url, args.duration, args.connections)
    check_call(httpx.post(url, json={"x": 1}, timeout=30))
    return result


def _sse_load(server: Running, args: argparse.Namespace) -> dict[str, Any]:
    url = server.url("stream")
    check_stream(url)
    result = run_sse_load(url, args)
    if result["bad_streams"] or not result["events"]:
        raise BenchError(
            f"{result['bad_streams']} bad stream(s) of {result['streams']}: {result['statuses']}"
        )
    return result


def _describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED"
    for key, unit in (("rps", "req/s"), ("events_per_s", "events/s"), ("tasks_per_s", "tasks/s")):
        if key in result:
            p99 = f", p99 {result['p99_ms']:.1f} ms" if "p99_ms" in result else ""
            return f"{result[key]:,.0f} {unit}{p99}"
    return "?"


def _describe_memory(result: dict[str, Any]) -> str:
    if "error" in result:
        return "memory FAILED"
    return f"{result['processes']} process(es), RSS {result['rss_mb']:.0f} MB, PSS {result['pss_mb']:.0f} MB"


# --- the custom runtime proxy pair ---------------------------------------------------------------


def bench_proxy(round_number: int, args: argparse.Namespace) -> dict[str, Any]:
    """tests/apps/custom_asgi's POST /predict, called directly (the ceiling) and through cortex."""
    work = Path(tempfile.mkdtemp(prefix="bench-peers-proxy-"))
    sides = ("direct", "proxied") if round_number % 2 else ("proxied", "direct")
    outcome: dict[str, Any] = {}
    try:
        with proxy.serving(proxy.copy_app(work), work, {}) as cortex:
            outcome["cortex_ready_s"] = cortex.ready_s
            for side in sides:
                url = f"{cortex.base(side)}/predict"
                outcome[side] = _attempt(side, "proxy", _proxy_load, url, args)
                log(f"  custom runtime {side}: {_describe(outcome[side])}")
    except (proxy.BenchError, OSError, httpx.HTTPError) as exc:
        log(f"  custom runtime: FAILED {str(exc)[:400]}")
        outcome["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return outcome


def _proxy_load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    response = httpx.post(url, json={"x": 1}, timeout=30)
    if response.status_code != 200 or response.json().get("echo") != {"x": 1}:
        raise BenchError(f"POST {url}: HTTP {response.status_code} {response.text[:120]!r}")
    if args.warmup > 0:
        run_wrk(url, args.warmup, connections=args.connections)
    return wrk_result(url, args.duration, args.connections)


# --- the LLM chat stream (bench/llm.py, in .venv-ml) ---------------------------------------------


def run_llm(args: argparse.Namespace) -> dict[str, Any]:
    if not ML_PYTHON.exists():
        return {"error": "n/a: .venv-ml is missing (make install-ml builds it)"}
    output = args.output.with_name(args.output.stem + "-llm.json")
    command = [str(ML_PYTHON), str(BENCH_DIR / "llm.py"), "--no-docs", "--output", str(output)]
    command += ["--quick"] if args.quick else ["--rounds", str(args.llm_rounds)]
    log(f"LLM chat stream: {' '.join(command[1:])}")
    done = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, timeout=3600)
    if not output.exists():
        return {"error": f"bench/llm.py exited with code {done.returncode}: {done.stderr[-600:]}"}
    result: dict[str, Any] = json.loads(output.read_text())
    result["exit_code"] = done.returncode
    result["output"] = str(output.relative_to(REPO_DIR))
    return result


# --- the run -------------------------------------------------------------------------------------


def run_rounds(args: argparse.Namespace) -> list[dict[str, Any]]:
    rounds = []
    for number in range(1, args.rounds + 1):
        log(f"round {number}/{args.rounds}")
        round_: dict[str, Any] = {"round": number, "peers": {}}
        for name in args.peer_names:
            round_["peers"][name] = bench_peer(PEERS[name], args)
        if not args.no_proxy:
            round_["proxy"] = bench_proxy(number, args)
        rounds.append(round_)
    return rounds


def collect_meta(args: argparse.Namespace, peer_versions: dict[str, str]) -> dict[str, Any]:
    from importlib import metadata

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "pinning": f"servers CPU {SERVER_CPU}, load CPU {LOAD_CPU}" if can_pin() else "none",
        "cpu_busy_at_start": _cpu_busy(),
        "load_average_at_start": _load_average(),
        "uptime_at_start": _uptime(),
        "versions": {
            "python": sys.version.split()[0],
            "cortex": _cortex_version(),
            "cortex_venv": {name: metadata.version(name) for name in CORTEX_PACKAGES},
            "peers_venv": peer_versions,
            "wrk": wrk_version(),
        },
        "settings": {
            key: getattr(args, key)
            for key in (
                "rounds",
                "duration",
                "warmup",
                "sweep_duration",
                "connections",
                "streams",
                "tasks",
                "poll_ms",
            )
        }
        | {
            "peers": args.peer_names,
            "events": SSE_EVENTS,
            "levels": list(CONCURRENCY_LEVELS),
            "quick": args.quick,
        },
    }


def _uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        payload = json.loads(args.render.read_text())
        args.output = args.render
    else:
        payload = measure_all(args)
    payload["summary"] = peers_report.summarise(
        payload["rounds"], payload["llm"], payload["settings"]["peers"]
    )
    args.output.write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    log(f"wrote {args.output}")
    summary = payload["summary"]
    write_docs = not (args.quick or args.no_docs)
    img_dir = peers_report.IMG_DIR if write_docs else Path(tempfile.gettempdir()) / "bench-peers-plots"
    images = peers_report.draw_plots(args.output, img_dir)
    log(f"plots in {img_dir}")
    markdown = peers_report.render(payload, images)
    print(markdown)
    if write_docs:
        peers_report.write_docs_section(markdown)
        log(f"wrote {peers_report.DOCS_PATH}")
    return 1 if peers_report.has_failures(summary) else 0


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every round, then the LLM bench; the raw results are saved before anything is summarised."""
    peer_versions = ensure_peers_venv()
    precompile()
    meta = collect_meta(args, peer_versions)
    log(f"{meta['uptime_at_start']}; peers: {peer_versions}")
    started = time.monotonic()
    rounds = run_rounds(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(jsonable({**meta, "rounds": rounds}), indent=2, allow_nan=False) + "\n")
    llm = run_llm(args) if args.llm == "run" else {"error": "skipped (--llm skip)"}
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = _load_average()
    meta["uptime_at_end"] = _uptime()
    return {**meta, "rounds": rounds, "llm": _llm_digest(llm)}


def _llm_digest(llm: dict[str, Any]) -> dict[str, Any]:
    """What peers.json keeps of bench/llm.py's results (the full file sits beside it)."""
    if "error" in llm:
        return llm
    keys = (
        "date",
        "versions",
        "settings",
        "wall_s",
        "load_average_at_start",
        "load_average_at_end",
        "summary",
    )
    ready = [
        {"round": r["round"], **{name: v.get("ready_s") for name, v in r["variants"].items()}}
        for r in llm["rounds"]
    ]
    return {key: llm.get(key) for key in keys} | {
        "ready_s": ready,
        "output": llm["output"],
        "exit_code": llm["exit_code"],
    }


if __name__ == "__main__":
    sys.exit(main())
