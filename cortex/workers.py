"""`cortex serve --workers N`: N server processes on one listening socket, under uvicorn's supervisor.

Each worker is a whole server: it imports main.py, answers calls, and runs its own run worker and
webhook dispatcher. They share nothing in memory; async runs are shared through the run store
(claims and deliveries are leased there), so any worker answers a poll of any run. uvicorn's
`Multiprocess` restarts a worker that dies, and on SIGTERM or Ctrl-C sends SIGTERM to each, which
drains its calls and running async runs as a single server does.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from cortex.config import CustomRuntimeConfig
from cortex.errors import ServeError

__all__ = ["STARTUP_FAILURE", "check_workers", "claim_once", "exit_worker", "run_workers"]

# A directory the parent makes and its workers share: one file per thing said once (claim_once).
_ONCE_DIR = "_CORTEX_WORKERS_ONCE_DIR"


def check_workers(workers: int, from_flag: bool, reload: bool, custom: CustomRuntimeConfig | None) -> None:
    """ServeError when `workers` processes cannot serve this app; `from_flag`: --workers was given
    (else the number came from CORTEX_WORKERS), so the message names what the user typed."""
    if workers <= 1:
        return
    given = f"--workers {workers}" if from_flag else f"CORTEX_WORKERS={workers}"
    if reload:
        raise ServeError(
            f"{given} cannot be combined with --reload: the reloader restarts a single process. "
            "Drop --reload to serve several workers, or serve one worker while developing."
        )
    if custom is not None:
        raise ServeError(
            f"{given}: this app has a custom runtime ([cerebrium.runtime.custom] in cerebrium.toml), "
            f"and each worker would start its server on port {custom.port}. Serve it with one "
            "worker; for more, run more replicas (containers or hosts) sharing one CORTEX_STORE."
        )


def run_workers(config: uvicorn.Config, sock: socket.socket) -> int:
    """Serve `config` (an app factory's import string, `workers` set) on `sock` until stopped.

    The exit code is 1 when a worker could not load the app, 0 otherwise.
    """
    once = Path(tempfile.mkdtemp(prefix="cortex-workers-"))
    os.environ[_ONCE_DIR] = str(once)  # inherited by every worker, the replacements too
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        shutil.rmtree(once, ignore_errors=True)
        sock.close()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return 1 if failed else 0


def claim_once(what: str) -> bool:
    """True for the first worker process to ask about `what` (of this `cortex serve`), False for
    the others and for workers started later to replace one that died."""
    directory = os.environ.get(_ONCE_DIR)
    if directory is None:  # not under run_workers: a single process says everything
        return True
    try:
        os.close(os.open(Path(directory) / what, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def exit_worker(code: int) -> None:
    """End this worker process now, from inside its event loop, with `code`.

    For a worker whose main.py failed to import: nothing of its own runs yet (its run worker waits
    for the import), and a graceful stop would exit 0, which the supervisor answers with a restart.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
