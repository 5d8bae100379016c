"""Zero-copy relay of a sized body from one socket to another with splice(2), on the event loop.

A large download relayed through user space costs a read and a write of every byte: measured,
that was as much CPU per MiB as the app spent producing it. splice moves the pages from the
app's socket through a pipe into the client's socket without copying them into Python.

The caller owns both connections and must have stopped their transports from touching the data:
reading paused on the source, nothing left to write on the destination. Waiting for readiness
uses duplicates of the two descriptors, because uvloop refuses add_reader/add_writer on a
descriptor one of its transports holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os

AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
PIPE_BYTES = 1024 * 1024  # how much one round of splices moves at most
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in the fcntl module only from Python 3.10 on Linux


class SpliceError(Exception):
    """The source ended before the whole body had come, or the destination went away."""


async def splice_body(source_fd: int, destination_fd: int, size: int, read_timeout: float) -> None:
    """Move exactly `size` bytes from `source_fd` to `destination_fd` (both non-blocking sockets).

    TimeoutError when the source sends nothing for `read_timeout` seconds; SpliceError when it
    closes early or the destination fails.
    """
    loop = asyncio.get_running_loop()
    source, destination = os.dup(source_fd), os.dup(destination_fd)
    pipe_out, pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only means more rounds
        fcntl.fcntl(pipe_in, _F_SETPIPE_SZ, PIPE_BYTES)
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    try:
        remaining = size
        while remaining:
            try:
                moved = os.splice(source, pipe_in, min(remaining, PIPE_BYTES), flags=flags)
            except BlockingIOError:
                await asyncio.wait_for(_ready(loop, source, reading=True), read_timeout)
                continue
            if moved == 0:
                raise SpliceError(f"the app's server closed the connection with {remaining} bytes to go")
            remaining -= moved
            await _drain_pipe(loop, pipe_out, destination, moved, flags)
    except (BrokenPipeError, ConnectionError) as exc:
        raise SpliceError(f"the connection broke mid-body: {exc}") from None
    finally:
        for fd in (source, destination, pipe_out, pipe_in):
            os.close(fd)


async def _drain_pipe(
    loop: asyncio.AbstractEventLoop, pipe_out: int, destination: int, size: int, flags: int
) -> None:
    while size:
        try:
            size -= os.splice(pipe_out, destination, size, flags=flags)
        except BlockingIOError:
            await _ready(loop, destination, reading=False)  # a slow client: wait for room


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, reading: bool) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if reading:
        loop.add_reader(fd, wake)
    else:
        loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        if reading:
            loop.remove_reader(fd)
        else:
            loop.remove_writer(fd)
