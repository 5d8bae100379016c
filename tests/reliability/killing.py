"""kill -9 of a server (or of one of two replicas) while it works through async runs: the body of
soak_kill_sqlite and soak_kill_redis."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

from tests.reliability.harness import Result, Server, make_app, scaled, wait_until
from tests.reliability.runs import Submitter, audit, poll_all, starts_per_run, store_attempts, unfinished

RUNS = 2000  # full scale; fast is a tenth
KILLS = 5  # at either scale
MAX_ATTEMPTS = 3  # Cortex's default CORTEX_MAX_ATTEMPTS, set explicitly
SUBMIT_SECONDS = 25.0  # submissions are paced over this long, so the kills land among them
KILL_GAP = (0.8, 2.5)  # seconds from a server being ready to its kill: longer than any run
# A run lasts ~110 ms at full scale (80 submitted a second) and ~400 ms at fast scale (8 a
# second), so some are in flight at each kill; a kill waits (up to 5 s) until one is.
RUN_MS = {"full": (50.0, 170.0), "fast": (200.0, 600.0)}
ENV = {"CORTEX_RUN_LEASE_SECONDS": "1", "CORTEX_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}


def kill_campaign(result: Result, scratch: Path, store: str, replicas: int) -> None:
    """`replicas` servers on `store`; the first is killed KILLS times (and restarted), the others
    are left alone. Every accepted run must end, none lost, none past MAX_ATTEMPTS."""
    rng = random.Random(result.seed)
    app = make_app(scratch / "app", concurrency=100)
    trace = scratch / "trace"
    trace.mkdir()
    runs = scaled(RUNS, result.scale)
    low, high = RUN_MS[result.scale]
    bodies = [{"ms": round(rng.uniform(low, high), 1), "trace": str(trace)} for _ in range(runs)]
    servers = [Server(app, store, ENV) for _ in range(replicas)]
    try:
        for server in servers:
            server.wait_ready()
        live = [server.base for server in servers]
        submitter = Submitter(lambda: list(live), "work", bodies, SUBMIT_SECONDS, result.seed).start()
        at_kill, downtime, leftovers = [], [], []
        for _ in range(KILLS):
            time.sleep(rng.uniform(*KILL_GAP))
            victim = servers[0]
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: unfinished(victim.url) > 0, 5, "a run in flight", 0.02)  # noqa: B023
            at_kill.append(unfinished(victim.url))
            live.remove(victim.base)
            down = time.monotonic()
            leftovers += victim.kill9()
            servers[0] = Server(app, store, ENV)
            servers[0].wait_ready()
            live.append(servers[0].base)
            downtime.append(time.monotonic() - down)
        submission = submitter.join(timeout=180)
        accepted = [submission.run_ids[i] for i in sorted(submission.run_ids)]
        result.check(not submission.error, f"submitter: {submission.error}")
        result.check(len(accepted) == runs, f"only {len(accepted)} of {runs} runs accepted")
        wait_until(lambda: unfinished(servers[-1].url) == 0, 300, "the store to hold no unfinished run", 0.5)
        polled = poll_all(servers[-1].base, accepted)
        exits = [server.terminate(timeout=30) for server in servers]
        leftovers += [pid for server in servers for pid in server.close()]
    finally:
        for server in servers:
            leftovers_at_exit = server.close()
            result.check(not leftovers_at_exit, f"processes left running: {leftovers_at_exit}")
    result.figures.update(
        replicas=replicas,
        kills=KILLS,
        unfinished_at_kills=at_kill,
        restart_s=round(max(downtime), 1),
        retried_submits=sum(submission.retried.values()),
    )
    attempts = store_attempts(store, "soak", accepted)
    audit(result, accepted, polled, starts_per_run(trace), attempts, MAX_ATTEMPTS)
    result.figures["procs_left"] = len(leftovers)
    result.check(not leftovers, f"processes still alive after kill -9 / stop: {leftovers}")
    result.check(all(n > 0 for n in at_kill), f"a kill found no unfinished run: {at_kill}")
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly: -15 is a clean exit.
    result.check(all(code == -15 for code in exits), f"exit codes after SIGTERM: {exits}")
