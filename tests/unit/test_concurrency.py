"""ThreadRunner (sync code off the loop), AdmissionGate (in-flight cap + FIFO queue), deadlines."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from cortex.concurrency import AdmissionGate, DeadlineExceeded, ThreadRunner, run_with_deadline
from cortex.errors import OverloadedError

T = TypeVar("T")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def with_threads(max_threads: int, body: Callable[[ThreadRunner], Awaitable[T]]) -> T:
    """Run `body(threads)` on a fresh loop with a fresh runner, shut down afterwards."""

    async def main() -> T:
        threads = ThreadRunner(max_threads)
        try:
            return await body(threads)
        finally:
            threads.shutdown()

    return asyncio.run(main())


# ThreadRunner


def test_runner_runs_the_function_in_another_thread() -> None:
    async def body(threads: ThreadRunner) -> int:
        return await threads.run(threading.get_ident)

    assert with_threads(2, body) != threading.get_ident()


def test_runner_returns_the_result_of_the_call_with_its_arguments() -> None:
    async def body(threads: ThreadRunner) -> str:
        return await threads.run("{}-{}".format, "a", 2)

    assert with_threads(2, body) == "a-2"


def test_runner_propagates_the_exception_raised_in_the_thread() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    async def body(threads: ThreadRunner) -> None:
        with pytest.raises(ValueError, match=r"^bad input$"):
            await threads.run(fail)

    with_threads(2, body)


def test_runner_reports_stop_iteration_instead_of_hanging() -> None:
    def first_large() -> int:
        return next(x for x in [1, 2] if x > 5)  # a plain function: StopIteration escapes

    async def body(threads: ThreadRunner) -> BaseException:
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(threads.run(first_large), 0.5)
        return caught.value

    assert not isinstance(with_threads(1, body), TimeoutError)


def test_runner_copies_the_callers_context_into_the_thread() -> None:
    def read_and_overwrite() -> str:
        seen = request_id.get()
        request_id.set("changed-in-thread")
        return seen

    async def body(threads: ThreadRunner) -> tuple[str, str]:
        request_id.set("req-42")
        seen = await threads.run(read_and_overwrite)
        return seen, request_id.get()

    assert with_threads(2, body) == ("req-42", "req-42")


def test_runner_never_starts_more_than_max_threads() -> None:
    async def body(threads: ThreadRunner) -> set[int]:
        one_by_one = {await threads.run(threading.get_ident) for _ in range(50)}
        at_once = await asyncio.gather(*(threads.run(threading.get_ident) for _ in range(50)))
        return one_by_one | set(at_once)

    assert len(with_threads(3, body)) in (1, 2, 3)  # never more threads than max_threads


def sleepers(count: int, max_threads: int) -> tuple[float, int]:
    """Run `count` jobs sleeping 0.2 s; the elapsed time and the peak number running at once."""
    lock = threading.Lock()
    running = peak = 0

    def nap() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1

    async def body(threads: ThreadRunner) -> float:
        started = time.monotonic()
        await asyncio.gather(*(threads.run(nap) for _ in range(count)))
        return time.monotonic() - started

    elapsed = with_threads(max_threads, body)
    return elapsed, peak


def test_blocking_jobs_run_in_parallel_up_to_max_threads() -> None:
    elapsed, peak = sleepers(8, max_threads=8)
    assert peak == 8
    assert elapsed < 0.6


def test_blocking_jobs_beyond_max_threads_wait_for_a_free_thread() -> None:
    elapsed, peak = sleepers(8, max_threads=2)
    assert peak == 2
    assert elapsed >= 0.8


def test_job_submitted_while_every_thread_is_busy_runs_later() -> None:
    release = threading.Event()

    async def body(threads: ThreadRunner) -> list[str]:
        busy = threads.run(lambda: "first" if release.wait(5) else "timed out")
        queued = threads.run(lambda: "second")
        await asyncio.sleep(0.05)
        assert not queued.done()  # the only thread is still busy
        release.set()
        return list(await asyncio.gather(busy, queued))

    assert with_threads(1, body) == ["first", "second"]


def test_cancelled_job_does_not_break_the_worker() -> None:
    release = threading.Event()
    ran: list[str] = []

    def slow() -> str:
        release.wait(5)
        ran.append("slow")
        return "ignored"

    async def body(threads: ThreadRunner) -> str:
        abandoned = threads.run(slow)
        abandoned.cancel()
        release.set()
        return await asyncio.wait_for(threads.run(lambda: "next"), 5)

    assert with_threads(1, body) == "next"
    assert ran == ["slow"]  # the cancelled call still ran to its end in the thread


def test_exception_of_a_cancelled_job_is_dropped_quietly() -> None:
    release = threading.Event()

    def fail_later() -> None:
        release.wait(5)
        raise RuntimeError("nobody is listening")

    async def body(threads: ThreadRunner) -> int:
        abandoned = threads.run(fail_later)
        abandoned.cancel()
        release.set()
        return await asyncio.wait_for(threads.run(lambda: 7), 5)

    assert with_threads(1, body) == 7


# AdmissionGate


async def start_entering(gate: AdmissionGate) -> asyncio.Task[None]:
    """Call enter() in a task and let it run as far as it can without other help."""
    task = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    return task


def test_gate_admits_immediately_below_the_limit() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=2, max_waiting=0)
        first, second = await start_entering(gate), await start_entering(gate)
        assert first.done() and second.done()
        assert (gate.active, gate.waiting) == (2, 0)

    asyncio.run(main())


def test_gate_queues_callers_past_the_limit() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        waiter = await start_entering(gate)
        assert not waiter.done()
        assert (gate.active, gate.waiting) == (1, 1)
        gate.leave()
        await waiter

    asyncio.run(main())


def test_gate_hands_slot_to_next_waiter_in_arrival_order() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        admitted: list[str] = []

        async def visitor(name: str) -> None:
            await gate.enter()
            admitted.append(name)

        await gate.enter()
        tasks = []
        for name in "BCD":
            tasks.append(asyncio.create_task(visitor(name)))
            await asyncio.sleep(0)
        assert (admitted, gate.waiting) == ([], 3)
        for expected in (["B"], ["B", "C"], ["B", "C", "D"]):
            gate.leave()
            await asyncio.sleep(0)
            assert admitted == expected
            assert gate.active == 1  # the slot moved; it was never free for a newcomer
        await asyncio.gather(*tasks)
        gate.leave()
        assert (gate.active, gate.waiting) == (0, 0)

    asyncio.run(main())


def test_newcomer_cannot_jump_the_queue_when_a_slot_is_handed_over() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        queued = await start_entering(gate)
        gate.leave()
        newcomer = await start_entering(gate)
        await queued
        assert not newcomer.done()
        assert (gate.active, gate.waiting) == (1, 1)
        gate.leave()
        await newcomer

    asyncio.run(main())


def test_gate_rejects_callers_past_max_waiting_with_overloaded_error() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=2)
        await gate.enter()
        waiters = [await start_entering(gate), await start_entering(gate)]
        with pytest.raises(OverloadedError) as caught:
            await gate.enter()
        assert caught.value.message == (
            "Too many requests: 1 running and 2 waiting "
            "(replica_concurrency=1, CORTEX_MAX_QUEUE=2). Retry after a moment."
        )
        assert (caught.value.status, caught.value.retry_after) == (429, 1)
        assert (gate.active, gate.waiting) == (1, 2)  # the rejected caller took nothing
        for waiter in waiters:
            waiter.cancel()

    asyncio.run(main())


def test_gate_with_no_queue_rejects_as_soon_as_it_is_full() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=3, max_waiting=0)
        for _ in range(3):
            await gate.enter()
        with pytest.raises(OverloadedError, match=r"^Too many requests: 3 running and 0 waiting "):
            await gate.enter()

    asyncio.run(main())


def test_cancelled_waiter_leaves_the_queue_without_taking_a_slot() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        waiter = await start_entering(gate)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.active, gate.waiting) == (1, 0)
        gate.leave()
        assert gate.active == 0
        assert (await start_entering(gate)).done()

    asyncio.run(main())


def test_waiter_cancelled_just_after_being_handed_a_slot_passes_it_on() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        unlucky = await start_entering(gate)
        next_in_line = await start_entering(gate)
        gate.leave()  # the slot goes to `unlucky`...
        unlucky.cancel()  # ...which is cancelled before it can resume
        with pytest.raises(asyncio.CancelledError):
            await unlucky
        await next_in_line
        assert (gate.active, gate.waiting) == (1, 0)
        gate.leave()
        assert gate.active == 0

    asyncio.run(main())


def test_waiter_cancelled_in_the_same_step_as_a_leave_ends_cancelled() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        waiter = await start_entering(gate)
        waiter.cancel()  # e.g. its client disconnected...
        gate.leave()  # ...while the running call finished, before the waiter could resume
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.active, gate.waiting) == (0, 0)

    asyncio.run(main())


def test_gate_returns_to_idle_after_a_burst_and_never_exceeds_its_limit() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=3, max_waiting=100)
        peak = 0

        async def call() -> None:
            nonlocal peak
            await gate.enter()
            try:
                peak = max(peak, gate.active)
                await asyncio.sleep(0.001)
            finally:
                gate.leave()

        await asyncio.gather(*(call() for _ in range(40)))
        assert peak == 3
        assert (gate.active, gate.waiting) == (0, 0)

    asyncio.run(main())


# AdmissionGate.wait_for_turn: the async-run worker's place in line, which takes no slot


async def start_waiting_for_turn(gate: AdmissionGate) -> asyncio.Task[None]:
    task = asyncio.create_task(gate.wait_for_turn())
    await asyncio.sleep(0)
    return task


def test_turn_comes_at_once_when_a_slot_is_free_and_takes_it_not() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=0)
        assert (await start_waiting_for_turn(gate)).done()
        assert (gate.active, gate.waiting, gate.has_room) == (0, 0, True)
        assert (await start_entering(gate)).done()  # a call after it is admitted at once

    asyncio.run(main())


def test_turn_comes_when_the_slot_is_freed_and_leaves_it_free() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=0)
        await gate.enter()
        turn = await start_waiting_for_turn(gate)
        assert not turn.done()
        gate.leave()
        await turn
        assert (gate.active, gate.waiting, gate.has_room) == (0, 0, True)

    asyncio.run(main())


def test_turn_is_neither_counted_as_waiting_nor_makes_calls_be_refused() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=1)
        await gate.enter()
        turn = await start_waiting_for_turn(gate)
        assert (gate.active, gate.waiting) == (1, 0)
        queued = await start_entering(gate)  # the line's one place is still free for a call
        assert not queued.done()
        with pytest.raises(OverloadedError, match=r"^Too many requests: 1 running and 1 waiting "):
            await gate.enter()
        turn.cancel()
        queued.cancel()

    asyncio.run(main())


def test_turn_waits_behind_earlier_callers_in_line() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        queued = await start_entering(gate)
        turn = await start_waiting_for_turn(gate)
        gate.leave()  # the slot goes to the caller that was in line first
        await queued
        await asyncio.sleep(0)
        assert not turn.done()
        gate.leave()
        await turn
        assert (gate.active, gate.waiting) == (0, 0)

    asyncio.run(main())


def test_when_the_turn_comes_the_slot_goes_on_to_the_caller_behind_it() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        turn = await start_waiting_for_turn(gate)
        behind = await start_entering(gate)
        gate.leave()
        await turn
        await behind  # the turn took no slot: the caller behind it has the one freed
        assert (gate.active, gate.waiting) == (1, 0)
        gate.leave()
        assert (gate.active, gate.has_room) == (0, True)

    asyncio.run(main())


def test_cancelled_turn_leaves_the_line_and_gives_back_nothing() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        turn = await start_waiting_for_turn(gate)
        behind = await start_entering(gate)
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
        assert (gate.active, gate.waiting) == (1, 1)
        gate.leave()
        await behind
        assert (gate.active, gate.waiting) == (1, 0)
        gate.leave()
        assert (gate.active, gate.has_room) == (0, True)

    asyncio.run(main())


def test_turn_cancelled_in_the_same_step_as_a_leave_gives_back_nothing() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        turn = await start_waiting_for_turn(gate)
        turn.cancel()
        gate.leave()
        with pytest.raises(asyncio.CancelledError):
            await turn
        assert (gate.active, gate.waiting, gate.has_room) == (0, 0, True)

    asyncio.run(main())


def test_turn_handed_over_then_cancelled_before_it_resumes_passes_nothing_on() -> None:
    async def main() -> None:
        gate = AdmissionGate(limit=1, max_waiting=5)
        await gate.enter()
        turn = await start_waiting_for_turn(gate)
        gate.leave()  # the turn comes and the slot is freed...
        turn.cancel()  # ...and it is cancelled before it resumes: it held nothing to pass on
        with pytest.raises(asyncio.CancelledError):
            await turn
        assert (gate.active, gate.waiting, gate.has_room) == (0, 0, True)

    asyncio.run(main())


# run_with_deadline


def test_deadline_returns_the_value_when_in_time() -> None:
    async def quick() -> str:
        await asyncio.sleep(0)
        return "done"

    assert asyncio.run(run_with_deadline(quick(), 1.0)) == "done"


def test_deadline_raises_deadline_exceeded_and_cancels_the_call() -> None:
    events: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await run_with_deadline(slow(), 0.05)
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert events == ["cancelled"]
    assert 0.05 <= elapsed < 1.0


def test_deadline_on_a_thread_job_cancels_the_wait() -> None:
    release = threading.Event()

    async def body(threads: ThreadRunner) -> None:
        job = threads.run(release.wait, 5)
        with pytest.raises(DeadlineExceeded):
            await run_with_deadline(job, 0.05)
        assert job.cancelled()
        release.set()

    with_threads(1, body)


def test_users_own_timeout_error_is_not_a_deadline() -> None:
    async def call_upstream() -> None:
        raise TimeoutError("upstream took too long")

    async def main() -> BaseException:
        with pytest.raises(TimeoutError, match=r"^upstream took too long$") as caught:
            await run_with_deadline(call_upstream(), 5.0)
        return caught.value

    assert not isinstance(asyncio.run(main()), DeadlineExceeded)


def test_users_own_expired_timeout_inside_the_deadline_is_not_a_deadline() -> None:
    async def impatient() -> Any:
        return await asyncio.wait_for(asyncio.sleep(30), 0.01)

    async def main() -> BaseException:
        with pytest.raises(TimeoutError) as caught:
            await run_with_deadline(impatient(), 5.0)
        return caught.value

    assert not isinstance(asyncio.run(main()), DeadlineExceeded)
