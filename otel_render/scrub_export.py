"""The last check before spans and log records leave the process: exporter
wrappers that pass everything through the one scrubber (``scrub.py``).

otel-render's own instrumentation scrubs at the source; these wrappers catch
what other instrumentations record (a contrib library putting a raw query
string in ``url.full``, a header captured as ``http.request.header.cookie``,
an exception message with a password in it, a log line with a token). They run
on the batch processors' export threads, never on the request path, and copy a
span only when something in it changes.

What is scrubbed, decided once per attribute key (and cached):

- a string value whose key, or the key's last dotted segment, is sensitive
  (``http.request.header.authorization``, ``app.api_key``) becomes
  ``[redacted]``; numbers and booleans are kept (``gen_ai.usage.input_tokens``);
- URLs (``url.full``, ``http.url``) lose passwords and sensitive query values;
  query strings (``url.query``, the query part of ``http.target``) likewise;
- free text (exception messages and stacks, database statements, log bodies)
  goes through ``scrub.default.text``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_render.scrub import REDACTED
from otel_render.scrub import default as scrubber

_KEEP, _REDACT, _URL, _QUERY, _TARGET, _TEXT = range(6)

_URL_KEYS = frozenset({"url.full", "http.url", "url.original", "http.request.header.referer", "server.url"})
_QUERY_KEYS = frozenset({"url.query", "http.query"})
_TARGET_KEYS = frozenset({"http.target"})
_TEXT_KEYS = frozenset(
    {
        "exception.message",
        "exception.stacktrace",
        "db.statement",
        "db.query.text",
        "code.stacktrace",
        "error.message",
        "http.request.body",
    }
)
_MAX_CACHED_KEYS = 4096
_treatments: dict[str, int] = {}


def treatment(key: str) -> int:
    """How values under ``key`` are scrubbed (cached per key)."""
    cached = _treatments.get(key)
    if cached is not None:
        return cached
    if key in _URL_KEYS:
        result = _URL
    elif key in _QUERY_KEYS:
        result = _QUERY
    elif key in _TARGET_KEYS:
        result = _TARGET
    elif key in _TEXT_KEYS:
        result = _TEXT
    elif scrubber.is_sensitive(key) or scrubber.is_sensitive(key.rsplit(".", 1)[-1]):
        result = _REDACT
    else:
        result = _KEEP
    if len(_treatments) < _MAX_CACHED_KEYS:
        _treatments[key] = result
    return result


def forget_treatments() -> None:
    """After the scrubber was extended (``OTEL_RENDER_SCRUB_KEYS``)."""
    _treatments.clear()


def _scrub_value(how: int, value: Any) -> Any:
    if how == _REDACT:
        if isinstance(value, str):
            return REDACTED
        if isinstance(value, (list, tuple)) and any(isinstance(item, str) for item in value):
            return tuple(REDACTED if isinstance(item, str) else item for item in value)
        return value
    if not isinstance(value, str):
        return value
    if how == _URL:
        return scrubber.url(value)
    if how == _QUERY:
        return scrubber.query_string(value)
    if how == _TARGET:
        path, mark, query = value.partition("?")
        return path + mark + scrubber.query_string(query) if mark else value
    return scrubber.text(value)


def scrub_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A scrubbed copy of ``attributes``, or None when nothing needs to change."""
    if not attributes:
        return None
    changed: dict[str, Any] | None = None
    for key, value in attributes.items():
        how = treatment(key)
        if how == _KEEP:
            continue
        scrubbed = _scrub_value(how, value)
        if scrubbed is not value and scrubbed != value:
            if changed is None:
                changed = dict(attributes)
            changed[key] = scrubbed
    return changed


def scrub_span(span: ReadableSpan) -> ReadableSpan:
    """``span``, or a copy with scrubbed attributes and event attributes."""
    attributes = scrub_attributes(span.attributes)
    events: list[Event] | None = None
    for index, event in enumerate(span.events):
        event_attributes = scrub_attributes(event.attributes)
        if event_attributes is not None:
            if events is None:
                events = list(span.events)
            events[index] = Event(event.name, event_attributes, event.timestamp)
    if attributes is None and events is None:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes if attributes is not None else span.attributes,
        events=events if events is not None else span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanExporter(SpanExporter):
    """Scrubs each span, then hands the batch to ``exporter``."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([scrub_span(span) for span in spans])

    def shutdown(self, timeout_millis: float | None = None) -> None:
        _shutdown(self.exporter, timeout_millis)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class ScrubbingLogExporter(LogRecordExporter):
    """Scrubs each log record's body and attributes, then hands the batch on.

    The records are the batch processor's own copies, so they are scrubbed in place.
    """

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter

    def export(self, batch: Sequence[Any]) -> Any:
        for readable in batch:
            record = readable.log_record
            if isinstance(record.body, str):
                record.body = scrubber.text(record.body)
            attributes = scrub_attributes(record.attributes)
            if attributes is not None:
                record.attributes = attributes
        return self.exporter.export(batch)

    def shutdown(self, timeout_millis: float | None = None) -> None:
        _shutdown(self.exporter, timeout_millis)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def _shutdown(exporter: Any, timeout_millis: float | None) -> None:
    """Pass the batch processor's remaining time on when the exporter takes it."""
    if timeout_millis is not None and "timeout_millis" in inspect.getfullargspec(exporter.shutdown).args:
        exporter.shutdown(timeout_millis=timeout_millis)
    else:
        exporter.shutdown()
