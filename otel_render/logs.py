"""Logs: trace, span and correlation ids on every log record, console lines in
the chosen format, and OTLP log export beside them.

Usage: nothing with ``opentelemetry-instrument`` (entry point ``logging``), or::

    from otel_render.logs import LoggingInstrumentor
    LoggingInstrumentor().instrument()

What it does, and what it never does:

- A log record factory (the stdlib's seam for this) puts ``otelTraceID``,
  ``otelSpanID``, ``otelTraceSampled``, ``otelServiceName`` (the names the
  contrib logging instrumentation uses, so ``%(otelTraceID)s`` formats keep
  working; ``"0"`` outside a span) and ``correlation_id`` (``""`` outside a
  request or job) on every record.
- ``OTEL_RENDER_LOG_FORMAT`` (``text`` by default) applies to console handlers
  (stream handlers that are not files) once the app is loaded (gunicorn loaded
  it, or its first request arrived), so the app's own logging configuration,
  done at import, is in place and kept: no ``basicConfig``, no level changes,
  no handler replaced. ``text`` appends `` trace_id=... span_id=...
  correlation_id=...`` to the first line of records made inside a request or
  job, for handlers using the standard ``logging.Formatter`` (custom formatter
  classes, JSON ones included, are left alone). ``json`` gives those handlers a
  :class:`JsonFormatter`: one JSON object per line. When the root logger has
  no handler at all, ``json`` adds one on stdout. gunicorn's error and access
  logs get the same treatment (``web/gunicorn.py`` hooks them).
- Every console line is scrubbed (``scrub.default.text``) before it is written.
- With OTLP log export configured (``OTEL_LOGS_EXPORTER=otlp``), an
  :class:`OtlpLogHandler` on the root logger sends what reaches the root (the
  loggers' own levels decide) through the SDK's batch processor. If the root
  had no handler before, a stderr handler equal to Python's "last resort" one
  (warnings and errors) is added with it, so console output stays the same.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Collection
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber

from otel_render import request_context
from otel_render.config import get_settings
from otel_render.instrumentor import RenderInstrumentor
from otel_render.scrub import default as scrubber

_logger = logging.getLogger("otel_render.logs")

_ID_ATTRIBUTES = ("otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName", "correlation_id")

#: LogRecord attributes that are not "extra" fields.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", *_ID_ATTRIBUTES}
)


# --------------------------------------------------------------------------
# Ids on every record
# --------------------------------------------------------------------------


class _FactoryState:
    previous: Any = None
    service_name = ""


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _FactoryState.previous(*args, **kwargs)
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        record.otelTraceID = f"{span_context.trace_id:032x}"
        record.otelSpanID = f"{span_context.span_id:016x}"
        record.otelTraceSampled = span_context.trace_flags.sampled
    else:
        record.otelTraceID = "0"
        record.otelSpanID = "0"
        record.otelTraceSampled = False
    work = request_context.current()
    record.correlation_id = (work.correlation_id or "") if work is not None else ""
    record.otelServiceName = _FactoryState.service_name
    return record


def install_record_factory(service_name: str = "") -> None:
    """Put the ids on every record from now on (idempotent)."""
    _FactoryState.service_name = service_name
    if _FactoryState.previous is None:
        _FactoryState.previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_record_factory)


def uninstall_record_factory() -> None:
    if _FactoryState.previous is not None:
        if logging.getLogRecordFactory() is _record_factory:
            logging.setLogRecordFactory(_FactoryState.previous)
        _FactoryState.previous = None


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    """The ids a record carries (none outside a request, job or span)."""
    ids = {}
    trace_id = getattr(record, "otelTraceID", "0")
    if trace_id and trace_id != "0":
        ids["trace_id"] = trace_id
        ids["span_id"] = getattr(record, "otelSpanID", "0")
    correlation_id = getattr(record, "correlation_id", "")
    if correlation_id:
        ids["correlation_id"] = correlation_id
    return ids


# --------------------------------------------------------------------------
# Formatters
# --------------------------------------------------------------------------


def iso_timestamp(created: float) -> str:
    """``2026-01-31T12:00:00.123Z`` from a record's ``created``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, ids,
    service, exception, and the record's ``extra`` fields; all scrubbed."""

    def __init__(self, service_name: str = "") -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # pylint: disable=broad-except
            message = f"{record.msg!r} % {record.args!r}"
        line: dict[str, Any] = {
            "timestamp": iso_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": scrubber.text(message),
        }
        line.update(record_ids(record))
        service = getattr(record, "otelServiceName", "") or self.service_name
        if service:
            line["service"] = service
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = scrubber.text(record.exc_text)
        if record.stack_info:
            line["stack"] = scrubber.text(self.formatStack(record.stack_info))
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            line["http"] = _access_fields(record.args)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in line and not key.startswith("_"):
                line[key] = scrubber.mapping(_json_safe(value))
        return json.dumps(line, ensure_ascii=False, default=str)


def _access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """The structured part of a gunicorn access line (the query string stays out)."""
    fields: dict[str, Any] = {"method": atoms.get("m"), "path": atoms.get("U"), "status": atoms.get("s")}
    try:
        fields["duration_ms"] = round(int(atoms.get("D", 0)) / 1000, 3)
    except (TypeError, ValueError):
        pass
    request_id = atoms.get("{x-request-id}o")
    if request_id and request_id != "-":
        fields["request_id"] = request_id
    return fields


class IdAppendingFormatter(logging.Formatter):
    """The app's own formatter, with the ids appended to the first line, scrubbed."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        text = scrubber.text(text)
        ids = record_ids(record)
        if not ids:
            return text
        suffix = "".join(f" {key}={value}" for key, value in ids.items())
        first, newline, rest = text.partition("\n")
        return first + suffix + newline + rest


# --------------------------------------------------------------------------
# Applying the format to console handlers
# --------------------------------------------------------------------------


def is_console_handler(handler: logging.Handler) -> bool:
    """A stream handler that is not a file (stdout, stderr, a WSGI error stream)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


class _Applied:
    lock = threading.Lock()
    done = False
    formatters: dict[int, tuple[logging.Handler, logging.Formatter | None]] = {}
    added: list[tuple[logging.Logger, logging.Handler]] = []


def format_handler(handler: logging.Handler, log_format: str, service_name: str = "") -> bool:
    """Give one handler the chosen format; returns whether it changed (once per handler)."""
    if log_format == "none" or id(handler) in _Applied.formatters:
        return False
    current = handler.formatter
    if isinstance(current, (JsonFormatter, IdAppendingFormatter)):
        return False
    if log_format == "json":
        replacement: logging.Formatter = JsonFormatter(service_name)
    elif current is None or type(current) is logging.Formatter:  # pylint: disable=unidiomatic-typecheck
        replacement = IdAppendingFormatter(current)
    else:
        return False  # a formatter class of the app's own: leave it alone
    _Applied.formatters[id(handler)] = (handler, current)
    handler.setFormatter(replacement)
    return True


def format_logger(logger: logging.Logger, log_format: str, service_name: str = "") -> None:
    for handler in list(logger.handlers):
        if is_console_handler(handler):
            format_handler(handler, log_format, service_name)


def _all_loggers() -> list[logging.Logger]:
    loggers = [logging.getLogger()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            loggers.append(logger)
    return loggers


def _service_name() -> str:
    resource = getattr(trace.get_tracer_provider(), "resource", None)
    name = resource.attributes.get("service.name") if resource is not None else None
    return str(name) if name else ""


def on_app_ready() -> None:
    """The app is imported and has configured its logging: apply our format to
    its console handlers and attach the OTLP handler. Once per process tree."""
    with _Applied.lock:
        if _Applied.done or not _Instrumented.active:
            return
        _Applied.done = True
    try:
        settings = get_settings()
        service_name = _service_name()
        _FactoryState.service_name = service_name
        root = logging.getLogger()
        root_was_empty = not root.handlers
        for logger in _all_loggers():
            format_logger(logger, settings.log_format, service_name)
        flask_handler = _flask_default_handler()
        if flask_handler is not None:
            format_handler(flask_handler, settings.log_format, service_name)
        if settings.log_format == "json" and root_was_empty:
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(JsonFormatter(service_name))
            _add_handler(root, console)
        _attach_otlp_handler(root, root_was_empty and settings.log_format != "json")
    except Exception:  # pylint: disable=broad-except
        _logger.warning("otel-render: could not set up log formatting; logs are unchanged", exc_info=True)


def format_gunicorn_loggers(*loggers: logging.Logger) -> None:
    """gunicorn's error and access loggers (they do not propagate to the root):
    the same format as the app's console lines, as soon as gunicorn sets them up."""
    if not _Instrumented.active:
        return
    try:
        log_format = get_settings().log_format
        for logger in loggers:
            format_logger(logger, log_format, _FactoryState.service_name)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not format gunicorn's logs", exc_info=True)


def _flask_default_handler() -> logging.Handler | None:
    module = sys.modules.get("flask.logging")
    return getattr(module, "default_handler", None) if module is not None else None


def _add_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.addHandler(handler)
    _Applied.added.append((logger, handler))


def _attach_otlp_handler(root: logging.Logger, add_last_resort: bool) -> None:
    from otel_render.distro import current_pipeline  # pylint: disable=import-outside-toplevel

    pipeline = current_pipeline()
    if pipeline is None or pipeline.logger_provider is None or not pipeline.owns_sdk:
        return
    if add_last_resort:
        # Python prints warnings and errors of an app without handlers through
        # logging.lastResort; once the root has a handler it no longer does.
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(IdAppendingFormatter(None))
        _add_handler(root, console)
    _add_handler(root, OtlpLogHandler(pipeline.logger_provider))


def restore() -> None:
    """Undo :func:`on_app_ready`: formatters back, added handlers removed."""
    with _Applied.lock:
        for handler, formatter in _Applied.formatters.values():
            handler.setFormatter(formatter)  # type: ignore[arg-type]
        _Applied.formatters = {}
        for logger, handler in _Applied.added:
            logger.removeHandler(handler)
        _Applied.added = []
        _Applied.done = False


# --------------------------------------------------------------------------
# OTLP export
# --------------------------------------------------------------------------

_SEVERITY = {
    logging.DEBUG: (SeverityNumber.DEBUG, "DEBUG"),
    logging.INFO: (SeverityNumber.INFO, "INFO"),
    logging.WARNING: (SeverityNumber.WARN, "WARN"),
    logging.ERROR: (SeverityNumber.ERROR, "ERROR"),
    logging.CRITICAL: (SeverityNumber.FATAL, "FATAL"),
}


def severity(levelno: int) -> tuple[SeverityNumber, str]:
    """OpenTelemetry severity of a stdlib level (the nearest standard level at or below)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG):
        if levelno >= level:
            return _SEVERITY[level]
    return SeverityNumber.TRACE, "TRACE"


class OtlpLogHandler(logging.Handler):
    """Sends records to a ``LoggerProvider`` (its batch processor exports them).

    The record's trace context is the current one; ``correlation.id``, code
    location, exception and ``extra`` fields become attributes. Scrubbing
    happens on the export thread (``otel_render.scrub_export``). Records of the
    OpenTelemetry SDK itself are not exported (an exporter failing to export
    would feed itself).
    """

    def __init__(self, logger_provider: Any) -> None:
        super().__init__()
        self._provider = logger_provider
        self._loggers: dict[str, Any] = {}
        self._failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("opentelemetry"):
            return
        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._loggers[record.name] = self._provider.get_logger(record.name)
            attributes: dict[str, Any] = {
                "code.file.path": record.pathname,
                "code.function.name": record.funcName,
                "code.line.number": record.lineno,
            }
            correlation_id = getattr(record, "correlation_id", "")
            if correlation_id:
                attributes["correlation.id"] = correlation_id
            if record.exc_info and record.exc_info[0] is not None:
                exc_type, exc, _ = record.exc_info
                attributes["exception.type"] = exc_type.__qualname__
                attributes["exception.message"] = str(exc)
                attributes["exception.stacktrace"] = self.formatter_or_default().formatException(record.exc_info)
            for key, value in vars(record).items():
                if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                    attributes[key] = (
                        value
                        if isinstance(value, (str, int, float, bool))
                        else json.dumps(_json_safe(value), default=str)
                    )
            number, text = severity(record.levelno)
            logger.emit(
                LogRecord(
                    timestamp=int(record.created * 1e9),
                    observed_timestamp=time.time_ns(),
                    context=otel_context.get_current(),
                    severity_number=number,
                    severity_text=text,
                    body=record.getMessage(),
                    attributes=attributes,
                )
            )
        except Exception:  # pylint: disable=broad-except
            if not self._failed:
                self._failed = True
                _logger.warning("otel-render: could not export a log record over OTLP", exc_info=True)

    def formatter_or_default(self) -> logging.Formatter:
        return self.formatter or logging.Formatter()


# --------------------------------------------------------------------------
# The instrumentor
# --------------------------------------------------------------------------


class _Instrumented:
    active = False


class LoggingInstrumentor(RenderInstrumentor):
    """Ids on log records, console format and OTLP export (see the module docstring).

    Replaces the contrib ``opentelemetry-instrumentation-logging`` (same
    attribute names), which our distro does not load.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        _Instrumented.active = True
        install_record_factory(_service_name())

    def _uninstrument(self, **kwargs: Any) -> None:
        _Instrumented.active = False
        uninstall_record_factory()
        restore()
