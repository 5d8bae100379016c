"""On a terminal, `cortex serve` shows a spinner with the elapsed time while main.py imports."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

from tests.conftest import APPS


def read_terminal_until(fd: int, marker: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_a_slow_import_shows_a_spinner_counting_seconds_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    env = {**os.environ, "SLOW_IMPORT_SECONDS": "2", "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cortex", "serve", str(APPS / "slow_import"), "--port", "0"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        output = read_terminal_until(controller, b"Ready.", timeout=30)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
        os.close(controller)
    text = output.decode("utf-8", "replace")
    assert "Importing main.py..." in text
    shown = {float(seconds) for seconds in re.findall(r"Importing main\.py\.\.\. (\d+\.\d) s", text)}
    assert len(shown) >= 3, shown  # the count went up while the import ran
    assert max(shown) >= 1.0
    assert "main.py imported in" in text and "Ready." in text
