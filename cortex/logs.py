"""Log output of `cortex serve`: text (rich) or JSON lines, and the run id on whatever a call writes.

`current_run_id` is set around each call (routes, streams, async runs); ThreadRunner copies the
context into its threads, so a sync function sees it too. While serving, sys.stdout and
sys.stderr are `RunTaggedStream`s: a line written during a call is prefixed `[run_id] ` (text)
or becomes a JSON record carrying `run_id` (json). Log records get `run_id` from `RunIdFilter`.

The per-call line is a record of `cortex.response`, whose level the log config sets:
DISABLE_RESPONSE_LOGS raises it above INFO, so a disabled line costs one cached level check.
When the log goes to a pipe or a file (as in production), `log_call` formats that line by hand
and writes it to the handler's stream itself: through `logging` it cost ~10-20% of a request.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from contextvars import ContextVar
from json.encoder import encode_basestring  # json.dumps of a str, without ensure_ascii
from typing import Any, Literal, TextIO

from rich.console import Console
from rich.logging import RichHandler

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

current_run_id: ContextVar[str | None] = ContextVar("cortex_run_id", default=None)

request_logger = logging.getLogger("cortex.request")  # DEBUG: a call came in (--debug shows it)
response_logger = logging.getLogger("cortex.response")  # INFO: a call ended, one line each
_CALL_FIELDS = ("function", "status", "duration_ms")
_QUIET = "WARNING"  # the level of a logger whose INFO/DEBUG lines are switched off


def log_call(function: str, status: int | str, duration_ms: float, run_id: str) -> None:
    """The line at the end of each call: `predict 200 1.3ms` plus the fields for JSON."""
    if response_logger.isEnabledFor(logging.INFO):
        if _direct:
            _direct[0].write_call(function, status, duration_ms, run_id)
        else:  # rich on a terminal, or logging that cortex did not configure
            response_logger.info(
                "%s %s %.1fms",
                function,
                status,
                duration_ms,
                extra=_call_fields(function, status, duration_ms, run_id),
            )
    for stream in _installed:
        stream.end_run(run_id)


def _call_fields(function: str, status: int | str, duration_ms: float, run_id: str) -> dict[str, Any]:
    return {"function": function, "status": status, "duration_ms": round(duration_ms, 3), "run_id": run_id}


class RunIdFilter(logging.Filter):
    """Adds `run_id` (None outside a call) to every record that lacks one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = current_run_id.get()
        return True


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def json_line(level: str, logger: str, message: str, run_id: str | None, created: float) -> str:
    record: dict[str, Any] = {"ts": _timestamp(created), "level": level, "logger": logger}
    record["message"] = message
    if run_id is not None:
        record["run_id"] = run_id
    return json.dumps(record, ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, run_id, and a call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None)
        if run_id is not None:
            data["run_id"] = run_id
        for name in _CALL_FIELDS:
            if name in record.__dict__:
                data[name] = record.__dict__[name]
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The message, prefixed `[run_id] ` during a call; rich adds time and level."""

    def __init__(self, fmt: str = "%(run_tag)s%(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        run_id = getattr(record, "run_id", None)
        record.run_tag = "" if run_id is None else f"[{run_id}] "
        return super().format(record)


class PlainTextFormatter(TextFormatter):
    """Text for a pipe or a file: rich would wrap long lines at 80 columns and pad short ones."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-8s %(run_tag)s%(message)s")


class CallLineHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler whose stream also takes the per-call line, formatted by hand (`log_call`).

    The line looks like the formatter's own (`PlainTextFormatter` or `JsonFormatter`), is written
    under the handler's lock with one write and flushed, as `StreamHandler.emit` does. The latest
    one created is the target until it is closed (dictConfig closes it on reconfiguring).
    """

    def __init__(self, stream: TextIO, log_format: LogFormat) -> None:
        super().__init__(stream)
        self._json = log_format == "json"
        self._second = (-1, "")  # one tuple: threads read a consistent second and its text
        _direct[:] = [self]

    def write_call(self, function: str, status: int | str, duration_ms: float, run_id: str) -> None:
        now = time.time()
        line = (
            self._json_line(function, status, duration_ms, run_id, now)
            if self._json
            else self._text_line(function, status, duration_ms, run_id, now)
        )
        self.acquire()
        try:
            self.stream.write(line)
            self.stream.flush()
        except Exception:
            self.handleError(self._record(function, status, duration_ms, run_id))
        finally:
            self.release()

    def _stamp(self, now: float) -> str:
        second, text = self._second
        if int(now) != second:
            second = int(now)
            if self._json:
                text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            else:
                text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = (second, text)
        return text

    def _text_line(
        self, function: str, status: int | str, duration_ms: float, run_id: str, now: float
    ) -> str:
        # PlainTextFormatter's "%(asctime)s %(levelname)-8s %(run_tag)s%(message)s"
        stamp = f"{self._stamp(now)},{int((now - int(now)) * 1000):03d}"
        return f"{stamp} INFO     [{run_id}] {function} {status} {duration_ms:.1f}ms\n"

    def _json_line(
        self, function: str, status: int | str, duration_ms: float, run_id: str, now: float
    ) -> str:
        # JsonFormatter's keys, in its order and with json.dumps' separators
        stamp = f"{self._stamp(now)}.{int(now % 1 * 1000):03d}Z"
        message = encode_basestring(f"{function} {status} {duration_ms:.1f}ms")
        status_json = str(int(status)) if isinstance(status, int) else encode_basestring(status)
        return (
            f'{{"ts": "{stamp}", "level": "INFO", "logger": "cortex.response", "message": {message}, '
            f'"run_id": {encode_basestring(run_id)}, "function": {encode_basestring(function)}, '
            f'"status": {status_json}, "duration_ms": {round(duration_ms, 3)!r}}}\n'
        )

    def _record(self, function: str, status: int | str, duration_ms: float, run_id: str) -> logging.LogRecord:
        args = (function, status, duration_ms)
        extra = _call_fields(function, status, duration_ms, run_id)
        return response_logger.makeRecord(
            response_logger.name, logging.INFO, __file__, 0, "%s %s %.1fms", args, None, extra=extra
        )

    def close(self) -> None:
        if self in _direct:
            _direct.clear()
        super().close()


_direct: list[CallLineHandler] = []  # the handler log_call writes to, if any


def text_handler() -> logging.Handler:
    """On the real stderr (a RunTaggedStream would tag lines twice): rich on a terminal."""
    stream = original(sys.stderr)
    if not stream.isatty():
        return CallLineHandler(stream, "text")  # log_config gives it PlainTextFormatter
    console = Console(file=stream, highlight=False, soft_wrap=True)
    return RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)


def json_handler() -> logging.Handler:
    return CallLineHandler(original(sys.stderr), "json")


def log_config(
    log_format: LogFormat, debug: bool, request_logs: bool = True, response_logs: bool = True
) -> dict[str, Any]:
    """dictConfig for cortex's, uvicorn's and the user's (root) loggers alike."""
    if log_format == "json":
        formatter: dict[str, Any] = {"()": JsonFormatter}
    else:
        formatter = {"()": TextFormatter if original(sys.stderr).isatty() else PlainTextFormatter}
    factory = json_handler if log_format == "json" else text_handler
    handler = {"()": factory, "formatter": "cortex", "filters": ["run_id"]}
    loggers: dict[str, Any] = {
        "cortex": {"handlers": ["cortex"], "level": "DEBUG" if debug else "INFO", "propagate": False},
        "uvicorn": {"handlers": ["cortex"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["cortex"], "level": "INFO", "propagate": False},
    }
    if not request_logs:
        loggers["cortex.request"] = {"level": _QUIET}
        loggers["uvicorn.access"]["level"] = _QUIET
    if not response_logs:
        loggers["cortex.response"] = {"level": _QUIET}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"run_id": {"()": RunIdFilter}},
        "formatters": {"cortex": formatter},
        "handlers": {"cortex": handler},
        "loggers": loggers,
        "root": {"handlers": ["cortex"], "level": "INFO"},
    }


def original(stream: TextIO) -> TextIO:
    """The stream a RunTaggedStream wraps, or the stream itself."""
    return stream.original if isinstance(stream, RunTaggedStream) else stream


class RunTaggedStream(io.TextIOBase):
    """sys.stdout/sys.stderr while serving: tags each line written during a call with its run id.

    Text: `[run_id] line` during a call, untouched otherwise. JSON: every line becomes a record
    (`logger` "stdout" or "stderr", `run_id` during a call), so the output stays JSON lines.
    Partial lines wait for their newline, per run; a call's last partial line is written when
    it ends (`end_run`).
    """

    def __init__(self, stream: TextIO, name: str, log_format: LogFormat) -> None:
        self.original = stream
        self._name = name
        self._json = log_format == "json"
        self._partial: dict[str | None, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        run_id = current_run_id.get()
        if run_id is None and not self._json:
            return self.original.write(text)
        with self._lock:
            pending = self._partial.pop(run_id, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[run_id] = rest
        if lines:
            self.original.write("".join(self._render(line, run_id) for line in lines))
        return len(text)

    def end_run(self, run_id: str) -> None:
        with self._lock:
            rest = self._partial.pop(run_id, None)
        if rest is not None:
            self.original.write(self._render(rest, run_id))
            self.original.flush()

    def _render(self, line: str, run_id: str | None) -> str:
        if self._json:
            return json_line("INFO", self._name, line, run_id, time.time()) + "\n"
        return f"[{run_id}] {line}\n"

    def flush(self) -> None:
        with self._lock:
            partial, self._partial = self._partial, {}
        for run_id, rest in partial.items():
            self.original.write(self._render(rest, run_id))
        self.original.flush()

    def isatty(self) -> bool:
        return not self._json and self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # io.TextIOBase declares it read-only
        return getattr(self.original, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


_installed: list[RunTaggedStream] = []


def install_streams(log_format: LogFormat) -> None:
    """Replace sys.stdout and sys.stderr with RunTaggedStreams (until `restore_streams`)."""
    if _installed:
        return
    stdout = RunTaggedStream(sys.stdout, "stdout", log_format)
    stderr = RunTaggedStream(sys.stderr, "stderr", log_format)
    streams = (stdout, stderr)
    sys.stdout, sys.stderr = streams
    _installed.extend(streams)


def restore_streams() -> None:
    if not _installed:
        return
    for stream in _installed:
        stream.flush()
    sys.stdout, sys.stderr = _installed[0].original, _installed[1].original
    _installed.clear()
