"""A real `redis-server` for tests: own port, own directory, AOF on, killable and restartable.

    server = RedisServer.start(tmp_dir)          # waits for PING
    server.url                                   # redis://127.0.0.1:PORT/0
    server.url_for(db=3)                         # another database of the same server
    server.kill9(); server.restart()             # same dir and port: the AOF is replayed
    server.stop()

Extra `redis-server` arguments (e.g. ["--appendonly", "no"], ["--requirepass", "pw"]) go to
`start(..., args=[...])` and are kept across restarts. With the default `--appendfsync everysec`
an acknowledged write can be lost to a kill -9 of the server only within its last second: a test
that kills the server waits more than a second after the writes it expects to survive.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = "redis-server"
DURABLE_ARGS = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
START_TIMEOUT = 10.0


def redis_server_path() -> str | None:
    """The redis-server executable, or None when it is not installed (`make system-packages`)."""
    return shutil.which(REDIS_SERVER)


def _free_port() -> int:
    # Kernel-chosen, then released: another process may take it before redis binds it, so
    # `start` retries on a collision with a new port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    """One redis-server process on 127.0.0.1, its data in `directory`."""

    def __init__(self, directory: Path, port: int, args: list[str], password: str | None) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, directory: Path, args: list[str] | None = None, attempts: int = 5) -> RedisServer:
        """Start on a free port (a new one if another process took it first)."""
        directory.mkdir(parents=True, exist_ok=True)
        extra = list(args or [])
        password = extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else None
        last: Exception | None = None
        for _ in range(attempts):
            server = cls(directory, _free_port(), extra, password)
            try:
                server._spawn()
                return server
            except RedisServerError as exc:
                last = exc
        raise RedisServerError(f"redis-server did not start in {attempts} attempts: {last}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def command(self, *args: str) -> str:
        """One command sent as raw RESP (no client library needed); the raw reply, e.g. "+OK\r\n"."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            if self.password:
                sock.sendall(_encode("AUTH", self.password))
                sock.recv(1024)
            sock.sendall(_encode(*args))
            return sock.recv(65536).decode(errors="replace")

    def kill9(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the AOF had fsynced."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port and directory (after kill9 or stop); the AOF is replayed."""
        self.kill9()
        self._spawn()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.proc = None

    def _spawn(self) -> None:
        executable = redis_server_path()
        if executable is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        argv = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += [*DURABLE_ARGS, "--daemonize", "no", "--logfile", "redis.log", *self.args]
        self.proc = subprocess.Popen(
            argv, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise RedisServerError(
                    f"redis-server exited ({self.proc.returncode}) on port {self.port}: {tail}"
                )
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.kill9()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING in {START_TIMEOUT} s")

    def _answers_ping(self) -> bool:
        try:
            reply = self.command("PING")
        except OSError:
            return False
        # While the AOF loads, PING answers -LOADING: not ready yet.
        return reply.startswith("+PONG")


def _encode(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
