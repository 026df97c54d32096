"""Logs: ids on records, console formats applied without replacing the app's
configuration, OTLP export through an SDK LoggerProvider."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from otel_render import logs, request_context
from otel_render.config import Settings, use_settings

TRACER = TracerProvider().get_tracer("t")


@pytest.fixture
def factory():
    logs.install_record_factory("shop")
    yield
    logs.uninstall_record_factory()


@pytest.fixture
def isolated_logger():
    logger = logging.getLogger("otel_render_test.app")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    yield logger, handler, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_records_inside_a_request_carry_trace_span_and_correlation_ids(factory):
    record_in = None
    with TRACER.start_as_current_span("request") as span:
        token = request_context.begin(request_context.WorkRecord(correlation_id="req-7"))
        try:
            record_in = logging.getLogRecordFactory()("a", logging.INFO, "", 0, "m", None, None)
        finally:
            request_context.end(token)
    record_out = logging.getLogRecordFactory()("a", logging.INFO, "", 0, "m", None, None)
    assert record_in.otelTraceID == f"{span.get_span_context().trace_id:032x}"
    assert record_in.otelSpanID == f"{span.get_span_context().span_id:016x}"
    assert record_in.correlation_id == "req-7"
    assert record_in.otelServiceName == "shop"
    assert (record_out.otelTraceID, record_out.correlation_id) == ("0", "")


def test_json_lines_have_the_fields_and_are_scrubbed(factory, isolated_logger):
    logger, handler, stream = isolated_logger
    assert logs.format_handler(handler, "json", "shop")
    with TRACER.start_as_current_span("request") as span:
        token = request_context.begin(request_context.WorkRecord(correlation_id="req-8"))
        try:
            logger.info("login\nfor %s with password=%s", "ann", "hunter2", extra={"order": {"id": 3, "api_key": "k"}})
            try:
                raise ValueError("token=abc")
            except ValueError:
                logger.exception("failed")
        finally:
            request_context.end(token)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one JSON object per line, newlines escaped
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "otel_render_test.app"
    assert first["message"] == "login\nfor ann with password=[redacted]"
    assert first["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert first["correlation_id"] == "req-8" and first["service"] == "shop"
    assert first["order"] == {"id": 3, "api_key": "[redacted]"}
    assert first["timestamp"].endswith("Z")
    assert "ValueError: token=[redacted]" in second["exception"]


def test_text_appends_ids_to_the_standard_formatter_only(factory, isolated_logger):
    logger, handler, stream = isolated_logger
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    assert logs.format_handler(handler, "text")
    logger.info("outside")
    with TRACER.start_as_current_span("request") as span:
        logger.warning("inside api_key=zzz")
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert stream.getvalue().splitlines() == [
        "INFO outside",
        f"WARNING inside api_key=[redacted] trace_id={trace_id} span_id={span.get_span_context().span_id:016x}",
    ]

    class AppJsonFormatter(logging.Formatter):
        pass

    other = logging.StreamHandler(io.StringIO())
    custom = AppJsonFormatter()
    other.setFormatter(custom)
    assert not logs.format_handler(other, "text")
    assert other.formatter is custom


def test_app_ready_keeps_levels_and_handlers_and_formats_console_ones(factory, monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    file_handler = logging.FileHandler("/dev/null")
    console = logging.StreamHandler(io.StringIO())
    app_logger = logging.getLogger("otel_render_test.configured")
    monkeypatch.setattr(app_logger, "handlers", [console, file_handler])
    root_level = root.level
    settings, _ = Settings.from_environ({"OTEL_RENDER_LOG_FORMAT": "json"})
    use_settings(settings)
    logs.LoggingInstrumentor().instrument()
    try:
        logs.on_app_ready()
        assert root.level == root_level
        assert app_logger.handlers == [console, file_handler]
        assert isinstance(console.formatter, logs.JsonFormatter)
        assert file_handler.formatter is None  # files are not console output
        (added,) = root.handlers  # the root had none: json adds one on stdout
        assert isinstance(added.formatter, logs.JsonFormatter)
    finally:
        logs.LoggingInstrumentor().uninstrument()
        use_settings(None)
        file_handler.close()
    assert console.formatter is None and root.handlers == []


def test_otlp_handler_sends_records_with_their_trace_context(factory):
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = logs.OtlpLogHandler(provider)
    logger = logging.getLogger("otel_render_test.otlp")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        with TRACER.start_as_current_span("request") as span:
            token = request_context.begin(request_context.WorkRecord(correlation_id="req-9"))
            try:
                logger.warning("paid %s", 3, extra={"order_id": 77})
            finally:
                request_context.end(token)
        logging.getLogger("opentelemetry.exporter.test").addHandler(handler)
        logging.getLogger("opentelemetry.exporter.test").warning("export failed")  # not fed back
    finally:
        logger.removeHandler(handler)
        logging.getLogger("opentelemetry.exporter.test").removeHandler(handler)
    (exported,) = exporter.get_finished_logs()
    record = exported.log_record
    assert record.body == "paid 3"
    assert record.trace_id == span.get_span_context().trace_id
    assert record.severity_text == "WARN"
    assert record.attributes["correlation.id"] == "req-9"
    assert record.attributes["order_id"] == 77
    assert "otelTraceID" not in record.attributes


def test_severity_maps_custom_levels_down():
    assert logs.severity(logging.WARNING)[1] == "WARN"
    assert logs.severity(25)[1] == "INFO"
    assert logs.severity(5)[1] == "TRACE"
