"""cortex.client against real servers: every method and error type, sync and async flavours."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortex.client import (
    AsyncClient,
    AuthError,
    BadRequestError,
    CallTimeoutError,
    Client,
    ConflictError,
    FunctionError,
    NotFoundError,
    OverloadedError,
    RunCancelledError,
    RunFailedError,
    RunPendingError,
    ValidationError,
    WaitTimeoutError,
)
from tests.auth_tokens import AUDIENCE, ISSUER, PROJECT, SECRET, claims, hs256
from tests.conftest import APPS, Served, serving


@pytest.fixture(scope="module")
def echo() -> Iterator[Served]:
    with serving(APPS / "echo") as served:
        yield served


@pytest.fixture(scope="module")
def words() -> Iterator[Served]:
    with serving(APPS / "stream_words") as served:
        yield served


@pytest.fixture(scope="module")
def jobs() -> Iterator[Served]:
    with serving(APPS / "jobs") as served:
        yield served


@pytest.fixture(scope="module")
def raises() -> Iterator[Served]:
    with serving(APPS / "raises") as served:
        yield served


def test_call_returns_the_result(echo: Served) -> None:
    with Client(echo.base) as app:
        assert app.call("predict", prompt="ab", n=2) == {"echo": "abab"}
        assert app.call("no_args") == "pong"
        assert app.call("created", name="x") == {"status_code": 201, "name": "x"}


def test_call_raises_validation_error_with_details(echo: Served) -> None:
    with Client(echo.base) as app, pytest.raises(ValidationError) as caught:
        app.call("predict", prompt=42)
    assert caught.value.status == 422
    assert caught.value.code == "validation_error"
    assert caught.value.message == "predict(): parameter 'prompt' expects str, got 42 (int)."
    assert [d["parameter"] for d in caught.value.details] == ["prompt"]


def test_call_unknown_function_raises_not_found(echo: Served) -> None:
    with Client(echo.base) as app, pytest.raises(NotFoundError) as caught:
        app.call("predcit")
    assert caught.value.status == 404
    assert caught.value.message.startswith("No function 'predcit' in main.py. Public functions: predict,")


def test_call_raises_function_error_naming_the_exception(raises: Served) -> None:
    with Client(raises.base) as app, pytest.raises(FunctionError) as caught:
        app.call("boom", message="bad")
    assert (caught.value.status, caught.value.type, caught.value.error_message) == (500, "ValueError", "bad")
    assert str(caught.value) == "ValueError: bad"
    assert caught.value.run_id is not None and uuid.UUID(caught.value.run_id)


def test_stream_yields_decoded_chunks(words: Served) -> None:
    with Client(words.base) as app:
        assert list(app.stream("words", text="a b c")) == ["a", "b", "c"]
        assert list(app.stream("awords", text="x y")) == [{"word": "x"}, {"word": "y"}]
        assert list(app.stream("mixed")) == [
            "pre-framed",
            "custom",
            "two\nlines",
            {"k": [1, 2]},
            [1, "a"],
            "raw bytes",
        ]


def test_stream_raises_the_error_event_after_the_chunks_before_it(words: Served) -> None:
    seen: list[Any] = []
    with Client(words.base) as app, pytest.raises(FunctionError) as caught:
        for chunk in app.stream("fails_midway", after=2):
            seen.append(chunk)
    assert seen == [{"i": 0}, {"i": 1}]
    assert (caught.value.type, caught.value.error_message) == ("RuntimeError", "the model fell over")


def test_stream_of_a_plain_function_yields_its_result_or_raises(echo: Served) -> None:
    with Client(echo.base) as app:
        assert list(app.stream("predict", prompt="hi")) == [{"echo": "hi"}]
        with pytest.raises(ValidationError):
            list(app.stream("predict"))


def test_submit_then_wait_returns_the_result(jobs: Served) -> None:
    with Client(jobs.base) as app:
        run = app.submit("add", a=2, b=3)
        assert run.status() in ("pending", "processing", "completed")
        assert run.wait(timeout=10) == {"sum": 5}
        assert run.result() == {"sum": 5}
        assert run.poll()["function"] == "add"
        assert app.run(run.id).result() == {"sum": 5}


def test_wait_raises_run_failed_with_the_error(jobs: Served) -> None:
    with Client(jobs.base) as app:
        run = app.submit("fail", message="no luck")
        with pytest.raises(RunFailedError) as caught:
            run.wait(timeout=10)
    assert (caught.value.type, caught.value.error_message, caught.value.run_id) == (
        "ValueError",
        "no luck",
        run.id,
    )


def test_result_of_an_unfinished_run_raises_pending_and_wait_times_out(jobs: Served) -> None:
    with Client(jobs.base) as app:
        run = app.submit("asleep", seconds=3)
        with pytest.raises(RunPendingError):
            run.result()
        with pytest.raises(WaitTimeoutError) as caught:
            run.wait(timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.message.startswith(f"Run {run.id} was still ")
        assert run.cancel()["status"] == "cancelled"
        with pytest.raises(RunCancelledError):
            run.wait(timeout=5)
        with pytest.raises(ConflictError) as conflict:
            run.cancel()
    assert conflict.value.status == 409


def test_submit_passes_ttl_and_idempotency_key(jobs: Served, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    key = str(uuid.uuid4())
    with Client(jobs.base) as app:
        first = app.submit("count", idempotency_key=key, ttl=60, marker=str(marker))
        again = app.submit("count", idempotency_key=key, ttl=60, marker=str(marker))
        assert again.id == first.id
        assert first.wait(timeout=10) == "counted"
        view = first.poll()
    assert marker.read_text() == "ran\n"
    assert view["expires_at"] > view["completed_at"]


def test_submit_refuses_a_private_webhook_url(jobs: Served) -> None:
    with Client(jobs.base) as app, pytest.raises(ValidationError) as caught:
        app.submit("add", webhook="http://127.0.0.1:9/hook", a=1, b=2)
    assert caught.value.code == "webhook_refused"


def test_events_replays_a_generator_run(jobs: Served) -> None:
    with Client(jobs.base) as app:
        run = app.submit("tokens", n=3)
        assert list(run.events()) == [{"token": 0}, {"token": 1}, {"token": 2}]
        assert list(run.events(last_event_id=1)) == [{"token": 2}]
        with pytest.raises(NotFoundError):
            list(app.submit("add", a=1, b=1).events())


def test_unknown_run_raises_not_found(jobs: Served) -> None:
    with Client(jobs.base) as app, pytest.raises(NotFoundError) as caught:
        app.run("no-such-run").status()
    assert caught.value.message == "No run 'no-such-run' (it never existed, or was deleted after its TTL)."


def test_bad_query_raises_bad_request(jobs: Served) -> None:
    with Client(jobs.base) as app, pytest.raises(BadRequestError) as caught:
        app.submit("add", ttl=0, a=1, b=2)
    assert caught.value.status == 400


def test_overloaded_and_timeout_errors() -> None:
    with serving(APPS / "slow", max_queue=0) as served, Client(served.base) as app:
        with pytest.raises(CallTimeoutError) as timeout:
            app.call("asleep", seconds=5)
        assert timeout.value.status == 504 and isinstance(timeout.value, TimeoutError)
        busy = [threading.Thread(target=_call_quietly, args=(served.base,)) for _ in range(2)]
        for thread in busy:
            thread.start()
        try:
            _wait_for_busy(served)
            with pytest.raises(OverloadedError) as overloaded:
                app.call("fast")
        finally:
            for thread in busy:
                thread.join()
    assert overloaded.value.status == 429
    assert overloaded.value.retry_after is not None and overloaded.value.retry_after >= 1


def _call_quietly(base: str) -> None:
    with Client(base) as app:
        app.call("asleep", seconds=0.8)


def _wait_for_busy(served: Served) -> None:
    from tests.conftest import wait_for

    wait_for(lambda: served.state.gate.active >= 2, timeout=5, what="both slots to be taken")


def test_token_is_sent_and_a_wrong_one_raises_auth_error() -> None:
    settings: dict[str, Any] = {
        "auth": True,
        "project_id": PROJECT,
        "jwt_secret": SECRET,
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
    }
    with serving(APPS / "echo", **settings) as served:
        with Client(served.base, token=hs256(claims())) as app:
            assert app.call("predict", prompt="ok") == {"echo": "ok"}
        for token in (None, hs256(claims(projectId="p-other"))):
            with Client(served.base, token=token) as app, pytest.raises(AuthError) as caught:
                app.call("predict", prompt="ok")
            assert caught.value.status == (401 if token is None else 403)


def test_async_client_calls_streams_and_errors(echo: Served, words: Served) -> None:
    async def scenario() -> None:
        async with AsyncClient(echo.base) as app:
            assert await app.call("apredict", x=2) == 4.0
            with pytest.raises(ValidationError):
                await app.call("predict")
            assert [c async for c in app.stream("predict", prompt="a")] == [{"echo": "a"}]
        async with AsyncClient(words.base) as app:
            assert [c async for c in app.stream("awords", text="p q")] == [{"word": "p"}, {"word": "q"}]
            seen = []
            with pytest.raises(FunctionError) as caught:
                async for chunk in app.stream("afails_midway", after=1):
                    seen.append(chunk)
            assert seen == [{"i": 0}]
            assert caught.value.type == "RuntimeError"

    asyncio.run(scenario())


def test_async_client_runs(jobs: Served) -> None:
    async def scenario() -> None:
        async with AsyncClient(jobs.base) as app:
            run = await app.submit("add", a=1, b=1)
            assert await run.wait(timeout=10) == {"sum": 2}
            assert await run.status() == "completed"
            assert await run.result() == {"sum": 2}
            failing = await app.submit("fail")
            with pytest.raises(RunFailedError):
                await failing.wait(timeout=10)
            streaming = await app.submit("words", text="u v")
            assert [c async for c in streaming.events()] == ["u", "v"]
            slow = await app.submit("asleep", seconds=3)
            with pytest.raises(WaitTimeoutError):
                await slow.wait(timeout=0.1)
            assert (await slow.cancel())["status"] == "cancelled"
            with pytest.raises(RunCancelledError):
                await app.run(slow.id).result()
            with pytest.raises(ConflictError):
                await slow.cancel()

    asyncio.run(scenario())
