"""Run the custom runtime's entrypoint as a child process: start, probe, restart, stop.

The entrypoint runs under a guard (cortex/custom/guard.py), the leader of its own process group,
so that the app and everything it starts die with cortex, even when cortex is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cortex.config import CONFIG_FILE, CustomRuntimeConfig
from cortex.custom import guard
from cortex.custom.launch import (
    ENTRYPOINT_KEY,
    child_environment,
    describe_exit,
    describe_missing_program,
    resolve_program,
)
from cortex.custom.probes import ProbeResult, probe_http, probe_tcp
from cortex.errors import CortexError

logger = logging.getLogger("cortex.custom")
app_logger = logging.getLogger("cortex.app")

HEALTH_INTERVAL = 2.0  # seconds between health checks once ready
PROBE_TIMEOUT = 2.0
READY_POLL = 0.1  # seconds between readiness checks while starting
HEALTH_FAILURES = 3  # failed health checks in a row that restart the app
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # restart delays: 1, 2, 4, ... 30 s
BACKOFF_RESET = 60.0  # healthy this long: the next restart waits BACKOFF_FIRST again
RESTART_GRACE = 10.0  # cap on SIGTERM -> SIGKILL for an app restarted, or never ready
ORPHAN_KILL_AFTER = 5.0  # cap on SIGTERM -> SIGKILL by the guard once cortex is gone
KEEP_LINES = 50
CHUNK = 65536  # a line longer than this is logged in pieces
GUARD = Path(guard.__file__)

State = Literal["new", "starting", "ready", "restarting", "stopping", "stopped", "failed"]


class CustomRuntimeError(CortexError):
    """The entrypoint cannot be started, exited at start, or never opened its port."""


@dataclass(frozen=True)
class _Child:
    """One run of the entrypoint: the guard process (leader of the group) and its output."""

    process: asyncio.subprocess.Process
    exited: asyncio.Task[int]
    pump: asyncio.Task[None]
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP_LINES))

    @property
    def pgid(self) -> int:
        return self.process.pid

    async def finish_output(self) -> None:
        """Wait (briefly) until everything the child printed has been logged."""
        await asyncio.wait({self.pump}, timeout=1.0)


class Supervisor:
    """One child process (in its own process group) serving the app on 127.0.0.1:`port`.

    `health_interval` (seconds between health checks once ready) is for tests.
    """

    def __init__(
        self,
        app_dir: Path,
        runtime: CustomRuntimeConfig,
        env: Mapping[str, str],  # added to os.environ for the child (PORT, APP_NAME, PROJECT_ID, ...)
        init_timeout: float,  # deployment_initialization_timeout
        grace_seconds: float,  # response_grace_period: how long SIGTERM waits before SIGKILL
        log_line: Callable[[str], None] | None = None,  # each line the child prints
        *,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        self._app_dir = app_dir.resolve()
        self._runtime = runtime
        self._env = dict(env)
        self._init_timeout = init_timeout
        self._grace = grace_seconds
        self._health_interval = health_interval
        self._name = self._env.get("APP_NAME") or self._app_dir.name
        self._log_line = log_line or self._log_app_line
        self._state: State = "new"
        self._restarts = 0
        self._child: _Child | None = None
        self._program: Path | None = None
        self._child_env: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._first_ready: asyncio.Future[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._runtime.port

    @property
    def ready(self) -> bool:
        """True once the readiness check passed since the last (re)start, False otherwise."""
        return self._state == "ready"

    @property
    def state(self) -> State:
        return self._state

    @property
    def restarts(self) -> int:
        """How many times the app was started again after it died or failed its health check."""
        return self._restarts

    @property
    def pid(self) -> int | None:
        """The current process group (its leader is the guard, the app runs under it)."""
        return self._child.pgid if self._child and self._child.process.returncode is None else None

    def last_lines(self) -> list[str]:
        """The last lines the current (or last) child printed."""
        return list(self._child.lines) if self._child else []

    def _log_app_line(self, line: str) -> None:
        app_logger.info("[%s] %s", self._name, line)

    async def start(self) -> None:
        """Spawn the child; CustomRuntimeError at once when the entrypoint cannot be found."""
        if self._state != "new":
            raise RuntimeError("Supervisor.start() may be called once")
        entrypoint = self._runtime.entrypoint
        if not entrypoint:
            raise CustomRuntimeError(
                f"{self._app_dir / CONFIG_FILE}: {ENTRYPOINT_KEY} is not set; cortex runs the "
                'entrypoint itself, e.g. entrypoint = ["uvicorn", "main:app", "--host", "0.0.0.0", '
                f'"--port", "{self.port}"].'
            )
        self._child_env = child_environment(self._env)
        path = self._child_env["PATH"]
        self._program = resolve_program(entrypoint[0], self._app_dir, path)
        if self._program is None:
            raise CustomRuntimeError(describe_missing_program(entrypoint, self._app_dir, path))
        await self._check_port_is_free()
        self._first_ready = asyncio.get_running_loop().create_future()
        self._state = "starting"
        self._child = await self._spawn()
        if self._stop_task is not None:  # stop() was called while we spawned
            await self._terminate(self._grace)
            return
        self._task = asyncio.create_task(self._supervise(self._child))
        self._task.add_done_callback(self._supervision_ended)

    async def wait_ready(self) -> None:
        """Until the first readiness check passes; CustomRuntimeError when the child exits first
        (with its last log lines) or does not open `port` within `init_timeout` (naming the
        ports it opened instead, when it did). Afterwards the supervisor restarts a child that
        dies or fails its health check, with backoff, and logs why. A child that failed to
        become ready is stopped before this raises."""
        if self._first_ready is None:
            raise RuntimeError("call Supervisor.start() before wait_ready()")
        await asyncio.shield(self._first_ready)

    async def stop(self) -> None:
        """SIGTERM to the group, up to `grace_seconds` for it to exit, then SIGKILL. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._state = "stopping"
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        await self._terminate(self._grace)
        self._settle_first_ready(CustomRuntimeError("The app was stopped before it was ready."))
        self._state = "stopped"

    # -- one child ---------------------------------------------------------------------------

    async def _check_port_is_free(self) -> None:
        if (await probe_tcp(self.port, PROBE_TIMEOUT)).ok:
            raise CustomRuntimeError(
                f"Port {self.port} on 127.0.0.1 is already in use by another process, so the app "
                f"could not listen on it. Stop that process, or choose another port in "
                f"{self._app_dir / CONFIG_FILE} ([cerebrium.runtime.custom] port, and the port "
                "in entrypoint)."
            )

    async def _spawn(self) -> _Child:
        assert self._program is not None and self._runtime.entrypoint
        kill_after = min(self._grace, ORPHAN_KILL_AFTER)
        command = [
            *(sys.executable, "-I", str(GUARD)),
            *("--parent", str(os.getpid()), "--kill-after", str(kill_after), "--"),
            *(str(self._program), *self._runtime.entrypoint),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=self._app_dir,
                env=self._child_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # the guard leads a new group: one signal reaches it all
            )
        except OSError as exc:
            raise CustomRuntimeError(
                f"Cannot start the app's entrypoint ({self._command()}) in {self._app_dir}: {exc}"
            ) from exc
        lines: deque[str] = deque(maxlen=KEEP_LINES)
        assert process.stdout is not None
        pump = asyncio.create_task(self._pump(process.stdout, lines))
        logger.debug("Started %s (process group %d)", shlex.join(self._runtime.entrypoint), process.pid)
        return _Child(process, asyncio.create_task(process.wait()), pump, lines)

    async def _pump(self, stream: asyncio.StreamReader, lines: deque[str]) -> None:
        buffer = b""
        while chunk := await stream.read(CHUNK):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            if len(buffer) >= CHUNK:
                complete.append(buffer)
                buffer = b""
            for raw in complete:
                self._emit(raw, lines)
        if buffer:
            self._emit(buffer, lines)

    def _emit(self, raw: bytes, lines: deque[str]) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        lines.append(line)
        try:
            self._log_line(line)
        except Exception:
            logger.exception("log_line failed for a line of the app's output")

    async def _terminate(self, grace: float) -> None:
        """SIGTERM to the group (through the guard), `grace` seconds, then SIGKILL to the group."""
        child = self._child
        if child is None:
            return
        if child.process.returncode is None:
            _send(child.process.pid, signal.SIGTERM)  # the guard sends it to the whole group
        elif await _group_alive(child.pgid):
            _send(-child.pgid, signal.SIGTERM)  # the guard is gone: signal the group directly
        deadline = time.monotonic() + grace
        while not (child.exited.done() and not await _group_alive(child.pgid)):
            if time.monotonic() >= deadline:
                logger.warning("[%s] still running %g s after SIGTERM; sending SIGKILL.", self._name, grace)
                _send(-child.pgid, signal.SIGKILL)
                await child.exited
                await _until_gone(child.pgid)  # SIGKILL is not instant: return once it took
                break
            await asyncio.wait({child.exited}, timeout=0.05)
        await child.finish_output()

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self, child: _Child) -> None:
        try:
            await self._until_ready(child)
        except CustomRuntimeError as exc:
            self._state = "failed"
            await self._terminate(min(self._grace, RESTART_GRACE))  # gone before wait_ready raises
            self._settle_first_ready(exc)
            return
        self._state = "ready"
        self._settle_first_ready(None)
        delay = BACKOFF_FIRST
        while True:
            healthy_since = time.monotonic()
            reason = await self._watch(child)
            self._state = "restarting"
            if time.monotonic() - healthy_since >= BACKOFF_RESET:
                delay = BACKOFF_FIRST
            child, delay = await self._restart(reason, delay)
            self._state = "ready"
            logger.info("[%s] restarted and ready again (restart %d).", self._name, self._restarts)

    async def _restart(self, reason: str, delay: float) -> tuple[_Child, float]:
        """Until a new child is ready: return it and the next backoff delay."""
        while True:
            logger.warning("[%s] The app %s; restarting it in %g s.", self._name, reason, delay)
            await self._terminate(min(self._grace, RESTART_GRACE))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            self._restarts += 1
            try:
                await self._check_port_is_free()
                self._child = await self._spawn()
                await self._until_ready(self._child)
                return self._child, delay
            except CustomRuntimeError as exc:
                reason = f"did not start again: {exc.message}"

    async def _until_ready(self, child: _Child) -> None:
        """Return once `child` passes its readiness check; CustomRuntimeError when it exits or
        is not ready within init_timeout."""
        endpoint = self._runtime.readycheck_endpoint
        deadline = time.monotonic() + self._init_timeout
        opened, last = False, ProbeResult(False, False, "no answer yet")
        while True:
            result = await self._probe(endpoint)
            if child.exited.done():
                raise CustomRuntimeError(await self._exit_message(child))
            if result.ok:
                return
            opened, last = opened or result.connected, result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CustomRuntimeError(await self._timeout_message(child, opened, last))
            await asyncio.wait({child.exited}, timeout=min(READY_POLL, remaining))

    async def _watch(self, child: _Child) -> str:
        """Health-check `child` until it must be restarted; return why."""
        endpoint = self._runtime.healthcheck_endpoint
        failures = 0
        while True:
            await asyncio.wait({child.exited}, timeout=self._health_interval)
            result = None if child.exited.done() else await self._probe(endpoint)
            if result is None or child.exited.done():
                await child.finish_output()
                return describe_exit(await child.exited)
            if result.ok:
                failures = 0
                continue
            failures += 1
            check = self._describe_check(endpoint)
            logger.warning(
                "[%s] health check %s failed (%d/%d): %s",
                *(self._name, check, failures, HEALTH_FAILURES, result.detail),
            )
            if failures >= HEALTH_FAILURES:
                return f"failed its health check {check} {failures} times in a row ({result.detail})"

    async def _probe(self, endpoint: str) -> ProbeResult:
        if not endpoint:
            return await probe_tcp(self.port, PROBE_TIMEOUT)
        path = endpoint if endpoint.startswith("/") else f"/{endpoint}"
        return await probe_http(self.port, path, PROBE_TIMEOUT)

    def _describe_check(self, endpoint: str) -> str:
        return f"GET {endpoint}" if endpoint else f"(a TCP connection to port {self.port})"

    def _supervision_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error("[%s] supervision of the app failed", self._name, exc_info=task.exception())
        self._state = "failed"
        self._settle_first_ready(CustomRuntimeError(f"Supervising the app failed: {task.exception()!r}"))

    def _settle_first_ready(self, error: CustomRuntimeError | None) -> None:
        future = self._first_ready
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: nobody waiting is not an error of its own

    # -- messages ----------------------------------------------------------------------------

    def _command(self) -> str:
        return shlex.join(self._runtime.entrypoint or ())

    def _tail(self, child: _Child) -> str:
        if not child.lines:
            return "It printed nothing."
        return "Its last lines:\n" + "\n".join(f"  {line}" for line in child.lines)

    async def _exit_message(self, child: _Child) -> str:
        await child.finish_output()
        how = describe_exit(child.exited.result())
        return (
            f"The app's entrypoint ({self._command()}) {how} before it was ready. "
            f"{self._tail(child)}\nFix what it reports, or run the entrypoint yourself in "
            f"{self._app_dir} to see why it stops."
        )

    async def _timeout_message(self, child: _Child, opened: bool, last: ProbeResult) -> str:
        limit = f"{self._init_timeout:g} s ([cerebrium.deployment] deployment_initialization_timeout)"
        endpoint = self._runtime.readycheck_endpoint
        if opened:
            return (
                f"The app opened port {self.port} but GET {endpoint} did not answer 200 within "
                f"{limit}; it last {last.detail}. Make {endpoint} answer 200 once the app can "
                f"serve, or raise deployment_initialization_timeout. {self._tail(child)}"
            )
        addresses = await asyncio.to_thread(guard.listening_addresses, child.pgid)
        if addresses is None:  # no /proc to tell
            return (
                f"The app did not open port {self.port} within {limit}. Check that the entrypoint "
                f"({self._command()}) starts a server on port {self.port}, or raise "
                f"deployment_initialization_timeout if it needs longer. {self._tail(child)}"
            )
        if addresses:
            return (
                f"The app did not open port {self.port} within {limit}: the app listens on "
                f"{', '.join(addresses)} but {CONFIG_FILE} says port = {self.port}. Make "
                "[cerebrium.runtime.custom] port and the port the entrypoint listens on the same "
                f"(PORT={self._env.get('PORT', self.port)} is in its environment)."
            )
        return (
            f"The app did not open port {self.port} within {limit}, nor any other TCP port. Check "
            f"that the entrypoint ({self._command()}) starts a server on port {self.port}, or "
            f"raise deployment_initialization_timeout if it needs longer. {self._tail(child)}"
        )


def _send(pid: int, sig: signal.Signals) -> None:
    """os.kill for a pid > 0, os.killpg for -pgid; a process already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pid > 0:
            os.kill(pid, sig)
        else:
            os.killpg(-pid, sig)


async def _until_gone(pgid: int, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while await _group_alive(pgid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _group_alive(pgid: int) -> bool:
    members = await asyncio.to_thread(guard.group_members, pgid)
    if members is not None:
        return bool(members)
    try:  # no /proc: zombies count as alive here, their parents reap them soon
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
