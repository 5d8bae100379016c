"""cortex.logs without a server: settings, formatters, the run-tagging stream."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from cortex.config import load_settings
from cortex.errors import ConfigError
from cortex.logs import (
    CallLineHandler,
    JsonFormatter,
    LogFormat,
    PlainTextFormatter,
    RunIdFilter,
    RunTaggedStream,
    current_run_id,
    log_call,
    response_logger,
)

RUN = 'run-"1"\u00e9'  # a run id from a header may hold anything JSON must escape


def test_disable_logs_follow_cerebrium_true_only_rule() -> None:
    settings = load_settings({"DISABLE_REQUEST_LOGS": "true", "DISABLE_RESPONSE_LOGS": "yes"})
    assert settings.disable_request_logs is True
    assert settings.disable_response_logs is False  # anything but true keeps the logs
    assert load_settings({"CORTEX_DISABLE_REQUEST_LOGS": "true"}).disable_request_logs is False


def test_log_format_is_text_or_json() -> None:
    assert load_settings({"CORTEX_LOG_FORMAT": "JSON"}).log_format == "json"
    assert load_settings({}).log_format == "text"
    with pytest.raises(ConfigError, match="CORTEX_LOG_FORMAT: expected text or json, got 'xml'"):
        load_settings({"CORTEX_LOG_FORMAT": "xml"})


def test_json_formatter_adds_run_id_and_call_fields() -> None:
    record = logging.LogRecord("cortex.response", logging.INFO, __file__, 1, "%s ok", ("f",), None)
    record.__dict__.update(function="f", status=200, duration_ms=1.5)
    token = current_run_id.set("run-1")
    try:
        RunIdFilter().filter(record)
    finally:
        current_run_id.reset(token)
    data = json.loads(JsonFormatter().format(record))
    assert data["run_id"] == "run-1" and data["message"] == "f ok" and data["status"] == 200
    assert data["level"] == "INFO" and data["logger"] == "cortex.response"


def test_text_stream_tags_lines_only_during_a_call() -> None:
    sink = io.StringIO()
    stream = RunTaggedStream(sink, "stdout", "text")
    stream.write("before\n")
    token = current_run_id.set("r1")
    try:
        stream.write("a")
        stream.write("b\nc\n")
        stream.write("tail")
    finally:
        current_run_id.reset(token)
    stream.end_run("r1")
    assert sink.getvalue() == "before\n[r1] ab\n[r1] c\n[r1] tail\n"


def test_json_stream_wraps_every_line() -> None:
    sink = io.StringIO()
    stream = RunTaggedStream(sink, "stderr", "json")
    stream.write("outside\n")
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert records[0]["message"] == "outside" and "run_id" not in records[0]
    assert records[0]["logger"] == "stderr" and not stream.isatty()


@pytest.fixture
def response_level() -> Iterator[None]:
    response_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        response_logger.setLevel(logging.NOTSET)


def _call_line(log_format: LogFormat, status: int | str = 200) -> str:
    sink = io.StringIO()
    handler = CallLineHandler(sink, log_format)
    try:
        log_call("predict", status, 1.2345, RUN)
    finally:
        handler.close()
    return sink.getvalue()


def _formatted(formatter: logging.Formatter, status: int | str = 200) -> str:
    record = logging.LogRecord(
        "cortex.response", logging.INFO, __file__, 1, "%s %s %.1fms", ("predict", status, 1.2345), None
    )
    record.__dict__.update(function="predict", status=status, duration_ms=1.234, run_id=RUN)
    return formatter.format(record) + "\n"


@pytest.mark.usefixtures("response_level")
def test_call_line_is_written_as_the_text_formatter_would() -> None:
    line = _call_line("text")
    stamp = len("2024-01-01 12:00:00,000")
    assert (
        line[stamp:] == _formatted(PlainTextFormatter())[stamp:] == f" INFO     [{RUN}] predict 200 1.2ms\n"
    )


@pytest.mark.usefixtures("response_level")
@pytest.mark.parametrize("status", [200, "completed"])
def test_call_line_is_written_as_the_json_formatter_would(status: int | str) -> None:
    line = _call_line("json", status)
    expected = _formatted(JsonFormatter(), status)
    assert line.endswith("\n") and line.count("\n") == 1
    assert line[line.index('"level"') :] == expected[expected.index('"level"') :]
    record = json.loads(line)
    assert record["run_id"] == RUN and record["status"] == status and record["duration_ms"] == 1.234
    assert record["ts"].endswith("Z") and len(record["ts"]) == len("2024-01-01T12:00:00.000Z")


def test_call_line_follows_the_response_logger_level() -> None:
    response_logger.setLevel(logging.WARNING)  # what DISABLE_RESPONSE_LOGS sets
    try:
        assert _call_line("text") == ""
    finally:
        response_logger.setLevel(logging.NOTSET)


@pytest.mark.usefixtures("response_level")
def test_call_line_goes_through_logging_once_its_handler_is_closed() -> None:
    _call_line("json")  # closes its handler
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    response_logger.addHandler(handler)
    try:
        log_call("predict", 200, 1.0, RUN)
    finally:
        response_logger.removeHandler(handler)
    assert sink.getvalue() == "predict 200 1.0ms\n"
