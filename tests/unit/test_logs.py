"""cortex.logs without a server: settings, formatters, the run-tagging stream."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cortex.config import load_settings
from cortex.errors import ConfigError
from cortex.logs import JsonFormatter, RunIdFilter, RunTaggedStream, current_run_id


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
