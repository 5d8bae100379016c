"""A Python client for a cortex (or Cerebrium) app: calls, streams and async runs, sync and async.

```python
from cortex.client import Client

with Client("http://127.0.0.1:8000/v4/p-local/my-app", token=None) as app:
    app.call("predict", prompt="hi")                 # the function's result
    for chunk in app.stream("generate", prompt="hi"):  # SSE chunks, decoded
        ...
    run = app.submit("predict", prompt="hi")         # ?async=true -> Run
    run.wait(timeout=60)                             # polls with backoff; the result
```

The base URL is the app's own: `{server}/v4/{project_id}/{app_name}`. Errors the server answers
are raised as subclasses of CortexClientError, chosen from the status and the JSON error body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_TIMEOUT = 60.0
_POLL_FIRST = 0.05  # seconds before the second poll; doubles up to _POLL_MAX
_POLL_MAX = 1.0
_SSE_ACCEPT = {"accept": "text/event-stream"}


class CortexClientError(Exception):
    """Anything the server refused or failed; `status` is the HTTP status (0: none)."""

    def __init__(
        self,
        message: str,
        status: int = 0,
        code: str | None = None,
        run_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.run_id = run_id
        self.body = body


class BadRequestError(CortexClientError):
    """400: the body is not JSON, or a query parameter or header is malformed."""


class AuthError(CortexClientError):
    """401 (no valid token) or 403 (the token is for another project)."""


class NotFoundError(CortexClientError):
    """404: no such project, app, function or run (or the run expired: code `expired`)."""


class ConflictError(CortexClientError):
    """409: e.g. cancelling a run that already ended."""


class ValidationError(CortexClientError):
    """422: arguments the function does not accept; `details` names each parameter."""

    @property
    def details(self) -> list[dict[str, Any]]:
        error = self.body.get("error", {}) if isinstance(self.body, dict) else {}
        details = error.get("details", [])
        return details if isinstance(details, list) else []


class OverloadedError(CortexClientError):
    """429: every slot busy and the queue full; retry after `retry_after` seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class UnavailableError(OverloadedError):
    """503: main.py is still importing, or the run store is unavailable."""


class FunctionError(CortexClientError):
    """The function raised (500, or `event: error` mid-stream); `type` is its exception's name."""

    def __init__(self, message: str, type: str, **kwargs: Any) -> None:
        super().__init__(f"{type}: {message}", **kwargs)
        self.type = type
        self.error_message = message


class CallTimeoutError(CortexClientError, TimeoutError):
    """504: the call outlived the app's response_grace_period."""


class RunFailedError(FunctionError):
    """An async run ended `failed`; `type` is the exception's name (`Timeout`, `Interrupted`...)."""


class RunCancelledError(CortexClientError):
    """An async run ended `cancelled`."""


class RunPendingError(CortexClientError):
    """Run.result() on a run that has not finished; use wait() to block until it has."""


class WaitTimeoutError(CortexClientError, TimeoutError):
    """Run.wait() gave up: the run was still going when `timeout` ran out (it keeps running)."""


def error_from_response(response: httpx.Response) -> CortexClientError:
    """The typed error for a non-2xx answer, from its status and JSON body (pure)."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"HTTP {status}: {str(body)[:200]}")
    run_id = response.headers.get("x-request-id")
    common: dict[str, Any] = {"status": status, "code": error.get("code"), "run_id": run_id, "body": body}
    if status in (401, 403):
        return AuthError(message, **common)
    if status == 504:
        return CallTimeoutError(message, **common)
    if "type" in error:  # the function ran and raised
        return FunctionError(str(error.get("message", "")), str(error["type"]), **common)
    kind = {400: BadRequestError, 404: NotFoundError, 409: ConflictError, 422: ValidationError}
    if status in kind:
        return kind[status](message, **common)
    if status in (429, 503):
        retry = response.headers.get("retry-after")
        retry_after = float(retry) if retry and retry.isdigit() else None
        cls = OverloadedError if status == 429 else UnavailableError
        return cls(message, retry_after=retry_after, **common)
    return CortexClientError(message, **common)


def result_from_response(response: httpx.Response) -> Any:
    """The `result` of a call's envelope (also for a `status_code` result), else the typed error."""
    if response.is_success or response.headers.get("content-type", "").startswith("application/json"):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "result" in body and "run_id" in body:
            return body["result"]
    raise error_from_response(response)


@dataclass
class SSEDecoder:
    """Server-Sent Events lines -> chunks (pure): JSON data decoded, other data as text.

    `event: error` raises FunctionError; comments and `retry:` are skipped. A chunk that was a
    string looking like JSON ("42") comes back decoded: the wire format cannot tell them apart.
    """

    event: str = ""
    data: list[str] = field(default_factory=list)
    last_id: str | None = None

    def feed(self, line: str) -> Iterator[Any]:
        if line == "":
            yield from self._dispatch()
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.last_id = value

    def finish(self) -> Iterator[Any]:
        yield from self._dispatch()

    def _dispatch(self) -> Iterator[Any]:
        event, data = self.event, "\n".join(self.data)
        self.event, self.data = "", []
        if not data and not event:
            return
        decoded = _decode(data)
        if event == "error":
            error = decoded if isinstance(decoded, dict) else {"message": data}
            raise FunctionError(
                str(error.get("message", "")),
                str(error.get("type", "Error")),
                run_id=error.get("run_id"),
                body=error,
            )
        yield decoded


def decode_sse(lines: Iterable[str]) -> Iterator[Any]:
    decoder = SSEDecoder()
    for line in lines:
        yield from decoder.feed(line)
    yield from decoder.finish()


def _decode(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _submit_request(
    webhook: str | None, ttl: int | None, idempotency_key: str | None
) -> tuple[dict[str, str], dict[str, str]]:
    params = {"async": "true"}
    if webhook is not None:
        params["webhookEndpoint"] = webhook
    headers = {}
    if ttl is not None:
        headers["x-cortex-result-ttl"] = str(ttl)
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    return params, headers


def outcome(view: dict[str, Any]) -> Any:
    """A finished run's result, or its failure raised (pure); RunPendingError while it runs."""
    status, run_id = view.get("status"), view.get("run_id")
    if status == "completed":
        return view.get("result")
    if status == "failed":
        error = view.get("error") or {}
        raise RunFailedError(
            str(error.get("message", "")), str(error.get("type", "Error")), run_id=run_id, body=view
        )
    if status == "cancelled":
        raise RunCancelledError(f"Run {run_id} was cancelled.", run_id=run_id, body=view)
    raise RunPendingError(f"Run {run_id} is still {status}; wait() for it.", run_id=run_id, body=view)


class Run:
    """An async run of a Client; poll it, wait for it, cancel it, replay its chunks."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def poll(self) -> dict[str, Any]:
        """What the server knows of the run: status, times, and result or error once finished."""
        response = self.client.http.get(f"/runs/{self.id}")
        if response.status_code not in (200, 202):
            raise error_from_response(response)
        view: dict[str, Any] = response.json()
        return view

    def status(self) -> str:
        """pending, processing, completed, failed or cancelled."""
        return str(self.poll()["status"])

    def result(self) -> Any:
        """The result now; RunFailedError / RunCancelledError / RunPendingError otherwise."""
        return outcome(self.poll())

    def wait(self, timeout: float | None = None) -> Any:
        """Poll (0.05 s, doubling to 1 s) until the run ends; WaitTimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            view = self.poll()
            if view["status"] not in ("pending", "processing"):
                return outcome(view)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise _wait_timeout(self.id, timeout, view)
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def cancel(self) -> dict[str, Any]:
        """Cancel it; ConflictError if it had already ended. Returns the run as it now stands."""
        response = self.client.http.delete(f"/runs/{self.id}")
        if response.status_code != 200:
            raise error_from_response(response)
        view: dict[str, Any] = response.json()
        return view

    def events(self, last_event_id: int | None = None) -> Iterator[Any]:
        """A generator run's chunks (replayed, then followed live); its failure raised at the end."""
        headers = {**_SSE_ACCEPT}
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        with self.client.http.stream("GET", f"/runs/{self.id}/events", headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise error_from_response(response)
            yield from decode_sse(response.iter_lines())
        view = self.poll()
        if view["status"] in ("failed", "cancelled"):
            outcome(view)


class Client:
    """Calls the functions of one app.

    - base_url: the app's base, `http://127.0.0.1:8000/v4/p-local/my-app`
    - token: a JWT sent as `Authorization: Bearer` (servers with auth on)
    - timeout: seconds for each HTTP request (a call waits this long for its result)
    - http: an httpx.Client to use instead of one the client makes (its base_url is replaced)
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http or httpx.Client(timeout=timeout)
        self.http.base_url = httpx.URL(self.base_url + "/")
        self.http.headers.update(_headers(token))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def call(self, fn: str, /, **kwargs: Any) -> Any:
        """Call `fn` with `kwargs` and return its result (a generator's chunks, as a list)."""
        return result_from_response(self.http.post(f"/{fn}", json=kwargs))

    def stream(self, fn: str, /, **kwargs: Any) -> Iterator[Any]:
        """Call generator `fn` and yield its chunks as they come; FunctionError if it raises."""
        with self.http.stream("POST", f"/{fn}", json=kwargs, headers=_SSE_ACCEPT) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                response.read()
                yield result_from_response(response)  # not a generator: its result, or the error
                return
            yield from decode_sse(response.iter_lines())

    def submit(
        self,
        fn: str,
        /,
        webhook: str | None = None,
        ttl: int | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> Run:
        """Start `fn` as an async run (kept `ttl` seconds after it ends); returns at once."""
        params, headers = _submit_request(webhook, ttl, idempotency_key)
        response = self.http.post(f"/{fn}", json=kwargs, params=params, headers=headers)
        if response.status_code != 202:
            raise error_from_response(response)
        return Run(self, response.json()["run_id"])

    def run(self, run_id: str) -> Run:
        """A Run for an id submitted earlier (by this or another client)."""
        return Run(self, run_id)


class AsyncRun:
    """Run, for AsyncClient: the same methods, awaited."""

    def __init__(self, client: AsyncClient, run_id: str) -> None:
        self.client = client
        self.id = run_id

    def __repr__(self) -> str:
        return f"AsyncRun({self.id!r})"

    async def poll(self) -> dict[str, Any]:
        response = await self.client.http.get(f"/runs/{self.id}")
        if response.status_code not in (200, 202):
            raise error_from_response(response)
        view: dict[str, Any] = response.json()
        return view

    async def status(self) -> str:
        return str((await self.poll())["status"])

    async def result(self) -> Any:
        return outcome(await self.poll())

    async def wait(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            view = await self.poll()
            if view["status"] not in ("pending", "processing"):
                return outcome(view)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise _wait_timeout(self.id, timeout, view)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    async def cancel(self) -> dict[str, Any]:
        response = await self.client.http.delete(f"/runs/{self.id}")
        if response.status_code != 200:
            raise error_from_response(response)
        view: dict[str, Any] = response.json()
        return view

    async def events(self, last_event_id: int | None = None) -> AsyncIterator[Any]:
        headers = {**_SSE_ACCEPT}
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        async with self.client.http.stream("GET", f"/runs/{self.id}/events", headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                raise error_from_response(response)
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                for chunk in decoder.feed(line):
                    yield chunk
            for chunk in decoder.finish():
                yield chunk
        view = await self.poll()
        if view["status"] in ("failed", "cancelled"):
            outcome(view)


class AsyncClient:
    """Client for asyncio: the same arguments and methods, awaited (`stream` is async-iterated)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self.http.base_url = httpx.URL(self.base_url + "/")
        self.http.headers.update(_headers(token))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, fn: str, /, **kwargs: Any) -> Any:
        return result_from_response(await self.http.post(f"/{fn}", json=kwargs))

    async def stream(self, fn: str, /, **kwargs: Any) -> AsyncIterator[Any]:
        async with self.http.stream("POST", f"/{fn}", json=kwargs, headers=_SSE_ACCEPT) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                await response.aread()
                yield result_from_response(response)
                return
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                for chunk in decoder.feed(line):
                    yield chunk
            for chunk in decoder.finish():
                yield chunk

    async def submit(
        self,
        fn: str,
        /,
        webhook: str | None = None,
        ttl: int | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> AsyncRun:
        params, headers = _submit_request(webhook, ttl, idempotency_key)
        response = await self.http.post(f"/{fn}", json=kwargs, params=params, headers=headers)
        if response.status_code != 202:
            raise error_from_response(response)
        return AsyncRun(self, response.json()["run_id"])

    def run(self, run_id: str) -> AsyncRun:
        return AsyncRun(self, run_id)


def _wait_timeout(run_id: str, timeout: float | None, view: dict[str, Any]) -> WaitTimeoutError:
    return WaitTimeoutError(
        f"Run {run_id} was still {view['status']} after {timeout:g} s; it keeps running "
        "(wait again, or cancel it).",
        run_id=run_id,
        body=view,
    )
