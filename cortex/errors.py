"""Every error Cortex raises on purpose; HTTP statuses and CLI exit codes are mapped elsewhere."""

from __future__ import annotations

from typing import Any


class CortexError(Exception):
    """Base class: `message` is meant for the user and says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(CortexError):
    """cerebrium.toml (or a CORTEX_* variable) is missing, unreadable or invalid."""


class AppImportError(CortexError):
    """The app's main.py could not be imported."""


class ServeError(CortexError):
    """The server cannot start (e.g. the port is taken)."""


class BuildError(CortexError):
    """`cortex build` cannot write or build the image (a missing file, a failed docker build)."""


class DiscoveryError(CortexError):
    """main.py imported, but its functions cannot be served as they are written."""


class RequestError(CortexError):
    """A call was rejected before the user function ran: answered with `status`."""

    status = 400
    code = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class BadRequestError(RequestError):
    """A query parameter or header that is not what it should be."""


class ConflictError(RequestError):
    """The request conflicts with the run's state (cancelling a run that already ended)."""

    status = 409
    code = "conflict"


class InvalidJSONError(RequestError):
    status = 400
    code = "invalid_json"


class ValidationFailedError(RequestError):
    status = 422
    code = "validation_error"


class IdempotencyConflictError(RequestError):
    """An Idempotency-Key reused with a different body."""

    status = 422
    code = "idempotency_conflict"


class WebhookRefusedError(RequestError):
    """A webhook URL that is malformed or points at a non-public address."""

    status = 422
    code = "webhook_refused"


class NotFoundError(RequestError):
    status = 404
    code = "not_found"


class RunExpiredError(NotFoundError):
    """The run existed, but its result TTL has passed."""

    code = "expired"


class MethodNotAllowedError(RequestError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str = "POST") -> None:
        super().__init__(message)
        self.allow = allow  # sent as the Allow header


class PayloadTooLargeError(RequestError):
    status = 413
    code = "payload_too_large"


class OverloadedError(RequestError):
    """The in-flight limit and the waiting queue are both full."""

    status = 429
    code = "overloaded"
    retry_after = 1


class NotReadyError(RequestError):
    """main.py is still being imported."""

    status = 503
    code = "not_ready"
    retry_after = 5


class ClientDisconnectedError(Exception):
    """The client went away while we were reading its request (not a user-facing error)."""


class StoreError(CortexError):
    """The job store cannot be opened or used (bad CORTEX_STORE, unreadable file)."""


class StoreUnavailableError(RequestError):
    """The job store failed while answering a request."""

    status = 503
    code = "store_unavailable"
    retry_after = 5


class ResultNotSerializableError(CortexError):
    """A function returned something that cannot be written as JSON."""


class MissingDependencyError(CortexError):
    """An optional helper (cortex.vllm) was used without its extra installed."""


class IncompatibleResultError(CortexError):
    """A function's result cannot be given the OpenAI shape its route answers with."""


class FunctionReportedError(CortexError):
    """A function's output was an OpenAI error object (`{"error": {...}}`) instead of a result."""


class BadGatewayError(RequestError):
    """A custom runtime's server did not answer (it is down, restarting or crashed mid-call)."""

    status = 502
    code = "bad_gateway"
    retry_after = 5


class GatewayTimeoutError(RequestError):
    """A custom runtime's server did not answer within response_grace_period."""

    status = 504
    code = "gateway_timeout"


class RunUsageError(CortexError):
    """`cortex run` was given a target or arguments it cannot understand."""


class FunctionRaisedError(CortexError):
    """A function called by `cortex run` raised: `Type: message`; the cause keeps the traceback."""


class ScaffoldError(CortexError):
    """`cortex init` cannot create the app (a bad name, an unknown template, a non-empty folder)."""
