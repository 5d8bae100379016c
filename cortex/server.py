"""Run the app under uvicorn: load the config, print the endpoints, drain on shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console
from rich.markup import escape

from cortex import __version__
from cortex.app import CortexApp, build_app
from cortex.auth import exposure_warning
from cortex.banner import describe_endpoints, describe_proxy
from cortex.config import LoadedConfig, Settings, load_config, load_settings
from cortex.custom.runtime import dockerfile_notice
from cortex.discovery import Registry
from cortex.environment import load_env_file, set_app_identity
from cortex.errors import CortexError, ServeError
from cortex.http_protocol import connection_options
from cortex.logs import LogFormat, install_streams, log_config, restore_streams
from cortex.state import ServingState
from cortex.workers import STARTUP_FAILURE, check_workers, claim_once, exit_worker, run_workers

console = Console(stderr=True, highlight=False, soft_wrap=True)

# `--reload` runs the app in a child process that uvicorn restarts, `--workers N` in N of them;
# these carry the options to the children.
_RELOAD_OPTIONS = "_CORTEX_RELOAD_OPTIONS"
_WORKER_OPTIONS = "_CORTEX_WORKER_OPTIONS"


@dataclass(frozen=True)
class ServeOptions:
    app_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    project_id: str | None = None  # None: CORTEX_PROJECT_ID, else p-local
    store: str | None = None  # None: CORTEX_STORE, else the app's own SQLite file
    reload: bool = False
    debug: bool = False
    access_log: bool = False
    auth: bool | None = None  # None: CORTEX_AUTH, else cerebrium.toml's disable_auth
    env_file: str | None = None  # a dotenv file loaded before main.py is imported
    log_format: str | None = None  # None: CORTEX_LOG_FORMAT, else text
    workers: int | None = None  # None: CORTEX_WORKERS, else 1 (see cortex.workers)


def serve(options: ServeOptions) -> int:
    """Serve until stopped; the exit code is non-zero when main.py failed to load."""
    loaded = load_config(options.app_dir)  # fail fast, before a port is bound
    custom = loaded.config.runtime.custom
    notice = None if custom is None else dockerfile_notice(custom)  # ServeError when it cannot run
    if options.env_file is not None:  # before the settings, so a .env may hold CORTEX_* too
        load_env_file(Path(options.env_file))  # a --reload child inherits os.environ
    settings = _settings(options)
    check_workers(settings.workers, options.workers is not None, options.reload, custom)
    install_streams(_log_format(settings))  # a call's prints carry its run id from here on
    set_app_identity(loaded.config.deployment.name, settings.project_id)
    state = ServingState(options.app_dir, loaded.config, settings)  # checks the auth keys too
    sock = bind_socket(options.host, options.port)
    options = replace(options, port=sock.getsockname()[1])  # the real port when 0 was asked
    _print_start(options, loaded, state)
    if notice is not None:
        console.print(f"[yellow]note:[/] {escape(notice)}")
    if options.reload:
        sock.close()  # uvicorn's reloader binds the port itself
        _serve_with_reload(options)
        return 0
    if settings.workers > 1:
        _pass_options(options, _WORKER_OPTIONS)
        factory = "cortex.server:worker_app"
        config = _uvicorn_config(factory, options, state, factory=True, workers=settings.workers)
        try:
            return run_workers(config, sock)
        finally:
            restore_streams()
    failure: list[CortexError] = []
    server: uvicorn.Server

    def on_load_failed(exc: CortexError) -> None:
        _stop_spinners()
        failure.append(exc)
        if options.debug:
            traceback.print_exception(exc)
        console.print(f"[red]Error:[/] {escape(exc.message)}")
        server.should_exit = True

    app = build_app(state, _announce(options, state), on_load_failed)
    server = uvicorn.Server(_uvicorn_config(app, options, state))
    try:
        server.run(sockets=[sock])
    finally:
        _stop_spinners()
        restore_streams()
    return 1 if failure or not server.started else 0  # not started: the lifespan said why


def _serve_with_reload(options: ServeOptions) -> None:
    """uvicorn restarts a child process on changes; the child rebuilds the app from the options."""
    app_dir = _pass_options(options, _RELOAD_OPTIONS)
    uvicorn.run(
        "cortex.server:reloadable_app",
        factory=True,
        reload=True,
        reload_dirs=[str(app_dir)],
        host=options.host,
        port=options.port,
        access_log=options.access_log,
        log_config=_log_config(_settings(options)),
        # The child builds its ServingState from the same variables; the limits must match it.
        **connection_options(_settings(options)),
    )


def reloadable_app() -> CortexApp:
    """uvicorn's factory in a `--reload` child: the parent's options, read back."""
    options, state = _child_state(_RELOAD_OPTIONS)
    return build_app(state, _announce(options, state))


def worker_app() -> CortexApp:
    """uvicorn's factory in each `--workers` process. The first worker to load main.py prints the
    endpoints; a failed import stops them all, as it stops a single server."""
    options, state = _child_state(_WORKER_OPTIONS)
    announce = _announce(options, state, spinner=False)

    def on_loaded(registry: Registry | None) -> None:
        if claim_once("ready"):
            announce(registry)

    def on_load_failed(exc: CortexError) -> None:
        if claim_once("failed"):  # every worker fails alike: say it once
            if options.debug:
                traceback.print_exception(exc)
            console.print(f"[red]Error:[/] {escape(exc.message)}")
        exit_worker(STARTUP_FAILURE)  # the supervisor stops the others instead of restarting it

    return build_app(state, on_loaded, on_load_failed)


def _pass_options(options: ServeOptions, variable: str) -> Path:
    """Into the environment, which uvicorn's child processes inherit; the absolute app dir."""
    app_dir = options.app_dir.resolve()
    os.environ[variable] = json.dumps({**asdict(options), "app_dir": str(app_dir)})
    return app_dir


def _child_state(variable: str) -> tuple[ServeOptions, ServingState]:
    fields = json.loads(os.environ[variable])
    options = ServeOptions(**{**fields, "app_dir": Path(fields["app_dir"])})
    settings = _settings(options)
    install_streams(_log_format(settings))
    return options, ServingState(options.app_dir, load_config(options.app_dir).config, settings)


def _settings(options: ServeOptions) -> Settings:
    """CORTEX_* variables, overridden by the flags that were given."""
    return load_settings(
        project_id=options.project_id,
        store=options.store,
        debug=options.debug or None,
        auth=options.auth,
        log_format=options.log_format,
        workers=options.workers,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so `--port 0` can print the port the kernel chose."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"Cannot listen on {host}:{port}: {exc.strerror}. Pick another port with --port "
            "(0 lets the system choose one)."
        ) from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(
    app: CortexApp | str, options: ServeOptions, state: ServingState, **extra: Any
) -> uvicorn.Config:
    """`extra`: e.g. factory and workers, when `app` is an import string (see cortex.workers)."""
    return uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        access_log=options.access_log,
        log_config=_log_config(state.settings),
        lifespan="on",
        # SIGTERM: stop accepting, let in-flight calls finish for up to the grace period.
        timeout_graceful_shutdown=int(state.grace_seconds),
        # Read deadline, 431 for oversized heads, keep-alive timeout: see cortex.http_protocol.
        **connection_options(state.settings),
        **extra,
    )


def _print_start(options: ServeOptions, loaded: LoadedConfig, state: ServingState) -> None:
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    name = loaded.config.deployment.name
    console.print(
        f"[bold]Cortex {__version__}[/] serving app [bold]{name}[/] of project "
        f"[bold]{state.project_id}[/] from {options.app_dir} on http://{options.host}:{options.port}"
    )
    authenticator = state.authenticator
    if authenticator is not None:
        console.print(f"Authentication: on (JWT bearer tokens, {authenticator.verifier.algorithms}).")
    if state.settings.workers > 1:
        console.print(f"Workers: {state.settings.workers} processes on this port, sharing the run store.")
    exposed = exposure_warning(options.host, authenticator is not None)
    if exposed is not None:
        console.print(f"[bold red]WARNING:[/] {escape(exposed)}")


class _Elapsed:
    """Rendered on each refresh of the spinner, so the seconds count up by themselves."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()

    def __rich__(self) -> str:
        return f"{self.label} {time.perf_counter() - self.started:.1f} s"


class _ImportSpinner:
    """While main.py imports (or the app's own server starts): a spinner with the elapsed time,
    on a terminal only; piped output gets the "imported in N s" line alone."""

    def __init__(self, state: ServingState) -> None:
        label = "Starting the app's server..." if state.is_custom_runtime else "Importing main.py..."
        self._status = console.status(_Elapsed(label)) if console.is_terminal else None
        if self._status is not None:
            self._status.start()

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _announce(
    options: ServeOptions, state: ServingState, spinner: bool = True
) -> Callable[[Registry | None], None]:
    """Print the endpoints once main.py is loaded *and* the server accepts connections.

    spinner=False: for worker processes, which import main.py side by side on one terminal."""
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    base_url = f"http://{host}:{options.port}{state.base_path}"
    status = _ImportSpinner(state) if spinner else None
    if status is not None:
        _spinners.append(status)

    async def print_when_serving(registry: Registry | None) -> None:
        await _until_accepting(host, options.port)  # the import can beat uvicorn's startup
        token_project = None if state.authenticator is None else state.project_id
        custom = state.config.runtime.custom
        if registry is not None:
            lines = describe_endpoints(base_url, registry, token_project)
        else:
            assert custom is not None
            lines = describe_proxy(base_url, custom.port, token_project)
        for line in lines:
            console.print(line, markup=False)
        console.print(f"Ready. OpenAPI document: http://{host}:{options.port}/openapi.json")

    def on_loaded(registry: Registry | None) -> None:
        if status is not None:
            status.stop()
        task = asyncio.ensure_future(print_when_serving(registry))
        _background.add(task)
        task.add_done_callback(_background.discard)

    return on_loaded


_spinners: list[_ImportSpinner] = []


def _stop_spinners() -> None:
    while _spinners:
        _spinners.pop().stop()


async def _until_accepting(host: str, port: int) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return


_background: set[asyncio.Future[None]] = set()  # keeps the printing task referenced until done


def _log_format(settings: Settings) -> LogFormat:
    return "json" if settings.log_format == "json" else "text"


def _log_config(settings: Settings) -> dict[str, Any]:
    """cortex's, uvicorn's and the app's loggers: text or JSON lines, DISABLE_*_LOGS applied."""
    return log_config(
        _log_format(settings),
        settings.debug,
        request_logs=not settings.disable_request_logs,
        response_logs=not settings.disable_response_logs,
    )


logging.getLogger("cortex").addHandler(logging.NullHandler())
