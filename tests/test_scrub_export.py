"""The exporter wrappers: what other instrumentations record is scrubbed on
the export thread; clean spans pass untouched."""

from __future__ import annotations

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_render.scrub_export import ScrubbingLogExporter, ScrubbingSpanExporter, scrub_span


def traced(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(exporter)))
    return provider.get_tracer("contrib")


def test_attributes_other_instrumentations_add_are_scrubbed():
    exporter = InMemorySpanExporter()
    tracer = traced(exporter)
    with tracer.start_as_current_span("GET") as span:
        span.set_attributes(
            {
                "url.full": "https://bob:pw@api.example.com/v1?api_key=k1&page=2",
                "url.query": "session=s1&q=shoes",
                "http.target": "/cb?token=t1",
                "http.request.header.authorization": ("Bearer xyz",),
                "http.request.header.cookie": "sid=1",
                "app.client_secret": "shh",
                "gen_ai.usage.input_tokens": 12,
                "db.statement": "SELECT 1 -- password=hunter2",
                "http.route": "/v1",
            }
        )
        span.record_exception(RuntimeError("connect failed for postgresql://app:s3cret@db/prod"))
    (exported,) = exporter.get_finished_spans()
    attributes = exported.attributes
    assert attributes["url.full"] == "https://bob:[redacted]@api.example.com/v1?api_key=[redacted]&page=2"
    assert attributes["url.query"] == "session=[redacted]&q=shoes"
    assert attributes["http.target"] == "/cb?token=[redacted]"
    assert attributes["http.request.header.authorization"] == ("[redacted]",)
    assert attributes["http.request.header.cookie"] == "[redacted]"
    assert attributes["app.client_secret"] == "[redacted]"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert "hunter2" not in attributes["db.statement"]
    assert attributes["http.route"] == "/v1"
    (event,) = exported.events
    assert "s3cret" not in event.attributes["exception.message"]
    assert "s3cret" not in event.attributes["exception.stacktrace"]
    assert exported.context == span.get_span_context() and exported.parent is None


def test_a_clean_span_is_not_copied():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("GET /items/{id}", attributes={"http.route": "/items/{id}"}):
        pass
    (span,) = exporter.get_finished_spans()
    assert scrub_span(span) is span


def test_log_bodies_and_attributes_are_scrubbed():
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(ScrubbingLogExporter(exporter)))
    import logging

    from otel_render.logs import OtlpLogHandler

    logger = logging.getLogger("otel_render_test.scrubbed")
    logger.propagate = False
    handler = OtlpLogHandler(provider)
    logger.addHandler(handler)
    try:
        logger.warning("calling with Authorization: Bearer abcdef123", extra={"api_token": "t-1", "count": 2})
    finally:
        logger.removeHandler(handler)
    (record,) = exporter.get_finished_logs()
    assert "abcdef123" not in record.log_record.body
    assert record.log_record.attributes["api_token"] == "[redacted]"
    assert record.log_record.attributes["count"] == 2
