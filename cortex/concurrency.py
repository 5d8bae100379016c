"""Running sync code off the event loop, and capping how much runs at once."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from cortex.errors import OverloadedError

T = TypeVar("T")

_Job = tuple[asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class ThreadRunner:
    """A thread pool with a cheap hand-off to and from the event loop.

    anyio's `to_thread` (what Starlette uses) costs ~75 µs per call; most of it is bookkeeping
    we do not need. Here a call is one queue put, and the result comes back with one
    `call_soon_threadsafe`. Threads start on demand up to `max_threads` and then stay.
    """

    def __init__(self, max_threads: int, name: str = "cortex-worker") -> None:
        self._max_threads = max(1, max_threads)
        self._name = name
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # idle threads not yet claimed by a job, minus jobs still waiting

    def run(self, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `func(*args)` in a worker thread; the returned future resolves on the loop."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, contextvars.copy_context(), func, args))
        with self._lock:
            if self._idle > 0 or len(self._threads) >= self._max_threads:
                # Claim an idle thread (so two quick jobs never wait on one), or, at the cap,
                # owe one: a negative count is the backlog the next free threads pick up.
                self._idle -= 1
                return future
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()
        return future

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones finish their job first (they are daemons)."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, context, func, args = job
            del job  # do not keep the last job's arguments alive while idle
            outcome = _run(context, func, args)
            with self._lock:
                # Idle again *before* the caller hears back, so its next call reuses this thread.
                self._idle += 1
            call_soon_if_open(future.get_loop(), _settle, future, outcome)


def _run(context: contextvars.Context, func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bool, Any]:
    try:
        return True, context.run(func, *args)
    except StopIteration as exc:
        # An asyncio future refuses StopIteration (it would end the awaiting coroutine), as
        # starlette.concurrency also works around; `next()` on an empty iterator raises it.
        error = RuntimeError(f"{func.__qualname__}() raised StopIteration")
        error.__cause__ = exc
        return False, error
    except BaseException as exc:
        return False, exc


def call_soon_if_open(loop: asyncio.AbstractEventLoop, *args: Any) -> None:
    """call_soon_threadsafe from a worker thread, for work that may outlive the loop."""
    with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody is waiting
        loop.call_soon_threadsafe(*args)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # cancelled by a deadline or a gone client: nobody wants the result
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class AdmissionGate:
    """At most `limit` calls in flight; up to `max_waiting` more wait in line, FIFO; then 429.

    Cerebrium's `replica_concurrency` is the limit. Waiters are plain futures: a slot freed by
    `leave()` is handed straight to the next waiter, so nobody can jump the queue. The async-run
    worker also stands in line, with a turn that takes no slot (`wait_for_turn`).
    """

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = max(1, limit)
        self.max_waiting = max(0, max_waiting)
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._turns: set[asyncio.Future[None]] = set()  # those of `_waiters` that want no slot

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot (a turn wants none: it neither counts nor is refused)."""
        return len(self._waiters) - len(self._turns)

    @property
    def has_room(self) -> bool:
        """A slot is free for whoever calls enter() next."""
        return self.active < self.limit and not self._waiters

    def try_enter(self) -> bool:
        """Take a free slot at once, or take nothing and say so (the caller then waits with enter)."""
        if self.has_room:
            self.active += 1
            return True
        return False

    async def enter(self, wait_in_line: bool = False) -> None:
        """Take a slot, waiting in line for one; OverloadedError when the line is full.

        `wait_in_line` always waits (the async-run worker: its runs are already queued).
        """
        if self.has_room:
            self.active += 1
            return
        if self.waiting >= self.max_waiting and not wait_in_line:
            raise OverloadedError(
                f"Too many requests: {self.active} running and {self.waiting} waiting "
                f"(replica_concurrency={self.limit}, CORTEX_MAX_QUEUE={self.max_waiting}). "
                "Retry after a moment."
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # we were handed a slot as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # leave() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    async def wait_for_turn(self) -> None:
        """Return once a slot is free or our turn in line has come, taking no slot.

        For the async-run worker before it looks for a run: holding a slot for that look would
        refuse a call that arrives meanwhile although nothing runs. Its turn in line keeps runs
        from starving while calls keep the line full; when the turn comes the slot goes on to the
        next waiter, so the run found then waits in line with enter(wait_in_line=True).
        """
        if self.has_room:
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        self._turns.add(turn)
        try:
            await turn
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # leave() may have dropped it already
                self._waiters.remove(turn)
            self._turns.discard(turn)  # a turn owns nothing: there is no slot to pass on
            raise

    def leave(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled, and not yet out of the line
                self._turns.discard(waiter)
                continue
            waiter.set_result(None)
            if waiter in self._turns:
                self._turns.discard(waiter)  # a turn takes no slot: it goes on down the line
                continue
            return  # the slot moves to the waiter; `active` is unchanged
        self.active -= 1


class DeadlineExceeded(Exception):
    """The awaited call outlived its time limit (a user's own TimeoutError is not this)."""


if sys.version_info >= (3, 11):

    async def run_with_deadline(awaitable: Awaitable[T], seconds: float) -> T:
        """Await with a time limit, cancelling what is awaited when it runs out."""
        timer = asyncio.timeout(seconds)
        try:
            async with timer:
                return await awaitable
        except TimeoutError:
            if timer.expired():
                raise DeadlineExceeded from None
            raise

else:  # pragma: no cover - Python 3.10 has no asyncio.timeout

    async def run_with_deadline(awaitable: Awaitable[T], seconds: float) -> T:
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError:  # distinct from the builtin TimeoutError before 3.11
            raise DeadlineExceeded from None


class RunClock:
    """Times a function's own run: started once it is admitted, not while it waits in line."""

    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def elapsed_ms(self) -> float:
        """Milliseconds since start(); 0 when the function never started."""
        return 0.0 if self._started is None else (time.perf_counter() - self._started) * 1000.0
