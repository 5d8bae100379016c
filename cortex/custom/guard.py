"""The guard: leader of the app's process group, so no process of it outlives cortex.

`python -I guard.py --parent PID --kill-after S -- PROGRAM ARGV0 ARGS...` (stdlib only). It runs
PROGRAM (with ARGV0 as its argv[0]) as its child in its own process group and exits with the
child's exit code (dying of the same signal when the child did). A SIGTERM or SIGINT it receives
is sent once to the whole group. When cortex dies, even of SIGKILL, the guard learns it from
PR_SET_PDEATHSIG (Linux) or, anywhere, from os.getppid() changing; it then sends SIGTERM to the
group and SIGKILL `--kill-after` seconds later. When the child exits, the rest of the group
(processes it started and left behind) is ended too.

Linux sends the parent-death signal when the *thread* that started the guard ends (cortex's event
loop thread); with cortex still alive the guard takes it as a stop: the group gets SIGTERM.
The child also gets PR_SET_PDEATHSIG(SIGKILL) towards the guard, so that a guard killed outright
(OOM killer, SIGKILL) does not leave it running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.1
LEFTOVER_GRACE = 1.0  # seconds the rest of the group gets after the child exited
USAGE_EXIT = 2
USAGE = "usage: guard.py --parent PID --kill-after SECONDS -- PROGRAM ARGV0 [ARGS...]"


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def group_members(pgid: int) -> list[int] | None:
    """Live processes (zombies excluded) of process group `pgid`; None where /proc is missing."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def parse_listening(table: str) -> list[tuple[str, str]]:
    """(socket inode, "host:port") of each LISTEN row of a /proc/net/tcp or tcp6 table."""
    rows = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":  # 0A: TCP_LISTEN
            continue
        host_hex, port_hex = fields[1].split(":")
        raw = bytes.fromhex(host_hex)
        # The address is printed as 32-bit words in the kernel's byte order.
        words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
        packed = b"".join(word[::-1] if sys.byteorder == "little" else word for word in words)
        port = int(port_hex, 16)
        if len(packed) == 4:
            rows.append((fields[9], f"{socket.inet_ntop(socket.AF_INET, packed)}:{port}"))
        else:
            rows.append((fields[9], f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}"))
    return rows


def listening_addresses(pgid: int) -> list[str] | None:
    """The TCP addresses processes of group `pgid` listen on; None where /proc cannot tell."""
    members = group_members(pgid)
    if members is None:
        return None
    inodes = set()
    for pid in members:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found: list[str] = []
    for table in ("tcp", "tcp6"):
        for pid in members[:1]:  # one network namespace for the group
            try:
                text = Path(f"/proc/{pid}/net/{table}").read_text()
            except OSError:
                continue
            found += [address for inode, address in parse_listening(text) if inode in inodes]
    return sorted(set(found), key=found.index)


class Guard:
    def __init__(self, parent: int, kill_after: float) -> None:
        self.parent = parent
        self.kill_after = kill_after
        self.pgid = os.getpgrp()
        self.forwarded = False  # a SIGTERM/SIGINT went to the group already
        self.kill_at: float | None = None  # set once cortex is gone
        self.guard_pid = os.getpid()

    def is_orphaned(self) -> bool:
        return os.getppid() != self.parent

    def on_signal(self, sig: int, _frame: object) -> None:
        self.check_parent()
        if not self.forwarded:  # once: our own killpg echoes back here
            self.forwarded = True
            os.killpg(self.pgid, sig)

    def check_parent(self) -> None:
        if self.kill_at is None and self.is_orphaned():
            self.kill_at = time.monotonic() + self.kill_after
            if not self.forwarded:
                self.forwarded = True
                os.killpg(self.pgid, signal.SIGTERM)

    def child_setup(self) -> None:
        """In the forked child, before exec: die with the guard; never outlive it by a race."""
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.guard_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, program: str, argv: list[str]) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        if self.forwarded or self.is_orphaned():
            return 1  # told to stop, or cortex gone, before the app started
        try:
            child = subprocess.Popen(argv, executable=program, preexec_fn=self.child_setup)
        except OSError as exc:
            print(f"cortex: cannot run {program}: {exc}", file=sys.stderr, flush=True)
            return 127
        while True:
            try:
                code = child.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                self.check_parent()
                if self.kill_at is not None and time.monotonic() >= self.kill_at:
                    os.killpg(self.pgid, signal.SIGKILL)  # this guard included
        self.end_leftovers()
        return code

    def end_leftovers(self) -> None:
        """SIGTERM, then SIGKILL, to what the child left in the group (not to this guard)."""
        me = os.getpid()
        others = [pid for pid in group_members(self.pgid) or [] if pid != me]
        if not others:
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_GRACE
        while others and time.monotonic() < deadline:
            time.sleep(0.05)
            others = [pid for pid in group_members(self.pgid) or [] if pid != me]
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def exit_like(code: int) -> int:
    """Exit as the child did: with its code, or by the signal that killed it."""
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code  # the signal does not kill by default
    return code


def main(args: list[str]) -> int:
    try:
        split = args.index("--")
        options = dict(zip(args[:split:2], args[1:split:2], strict=True))
        parent, kill_after = int(options["--parent"]), float(options["--kill-after"])
        program, argv = args[split + 1], args[split + 2 :]
        if not argv:
            raise IndexError
    except (ValueError, KeyError, IndexError):
        print(USAGE, file=sys.stderr)
        return USAGE_EXIT
    if os.getpgrp() != os.getpid():
        os.setsid()  # lead a group of our own: signals to the group must never reach cortex
    set_parent_death_signal(signal.SIGTERM)
    # The parent may have died between fork and prctl: then no signal will ever come.
    return exit_like(Guard(parent, kill_after).run(program, argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
