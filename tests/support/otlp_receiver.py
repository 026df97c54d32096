"""A loopback OTLP/HTTP backend for tests: receive, decode, and let tests query.

This module owns ``OTLPReceiver`` and the plain records it decodes OTLP
protobuf payloads into (``ReceivedSpan``, ``ReceivedMetric``, ``ReceivedPoint``,
``ReceivedLog``, ``ReceivedRequest``). It speaks the OTLP/HTTP protobuf
encoding that ``opentelemetry-exporter-otlp-proto-http`` sends:

- ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` with
  ``Content-Type: application/x-protobuf``;
- ``Content-Encoding: gzip`` or ``deflate`` (or none);
- it answers with an empty ``Export*ServiceResponse``.

Set ``status`` to a non-2xx code to play a failing backend: requests are still
recorded in ``requests`` (so a test can see the attempts and their headers),
but their payload is not *accepted*, so it does not show up in ``spans()``,
``metrics()``, ``logs()`` or ``resources()``.

A request the receiver cannot understand (unknown path, OTLP/JSON, bad
compression, undecodable protobuf) is answered with 4xx and described in
``errors``; the server keeps running.

Usage::

    with OTLPReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        ...  # run the code under test
        assert receiver.wait_for(lambda r: r.spans(name="GET /"), timeout=10)

All public methods are thread-safe. Query methods return copies, so a test can
iterate over them while exports keep arriving.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "OTLPReceiver",
    "ReceivedLog",
    "ReceivedMetric",
    "ReceivedPoint",
    "ReceivedRequest",
    "ReceivedSpan",
    "any_value_to_python",
    "attributes_to_dict",
]

# Largest request body accepted (the exporters' default limit is far below).
_MAX_BODY_BYTES = 64 * 1024 * 1024
_PROTOBUF_CONTENT_TYPE = "application/x-protobuf"


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as it reached the receiver, accepted or not."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ``", "``."""
    body_size: int
    """Bytes on the wire, before decompression."""
    status: int
    """The status the receiver answered with."""

    def header(self, name: str) -> str | None:
        """Return a header's value by case-insensitive name, or None."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class ReceivedSpan:
    """One span, flattened out of ResourceSpans / ScopeSpans."""

    resource: dict[str, Any]
    scope: str
    scope_version: str
    name: str
    trace_id: str
    """32 lower-case hex digits."""
    span_id: str
    """16 lower-case hex digits."""
    parent_span_id: str
    """16 hex digits, or ``""`` for a root span."""
    kind: str
    """``"INTERNAL"``, ``"SERVER"``, ``"CLIENT"``, ``"PRODUCER"``,
    ``"CONSUMER"`` or ``"UNSPECIFIED"``: the same as ``SpanKind.X.name``."""
    attributes: dict[str, Any]
    status_code: int
    """0 unset, 1 ok, 2 error (the OTLP ``Status.StatusCode`` values)."""
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    start_time_unix_nano: int
    end_time_unix_nano: int


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of any metric kind; fields that do not apply are None."""

    attributes: dict[str, Any]
    start_time_unix_nano: int
    time_unix_nano: int
    value: int | float | None = None
    """Sum and gauge points."""
    count: int | None = None
    """Histogram, exponential histogram and summary points."""
    sum: float | None = None
    bucket_counts: tuple[int, ...] | None = None
    """Explicit-bucket histograms."""
    explicit_bounds: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ReceivedMetric:
    """One metric from one export request, with its points."""

    resource: dict[str, Any]
    scope: str
    scope_version: str
    name: str
    unit: str
    description: str
    kind: str
    """``"sum"``, ``"gauge"``, ``"histogram"``, ``"exponential_histogram"`` or
    ``"summary"``."""
    is_monotonic: bool | None
    """For sums; None for other kinds."""
    temporality: str | None
    """``"cumulative"``, ``"delta"`` or ``"unspecified"`` for sums and
    histograms; None for other kinds."""
    points: list[ReceivedPoint]


@dataclass(frozen=True)
class ReceivedLog:
    """One log record, flattened out of ResourceLogs / ScopeLogs."""

    resource: dict[str, Any]
    scope: str
    body: Any
    severity_text: str
    severity_number: int
    attributes: dict[str, Any]
    trace_id: str
    """32 hex digits, or ``""`` when the record has no trace context."""
    span_id: str
    """16 hex digits, or ``""``."""
    time_unix_nano: int
    observed_time_unix_nano: int


# --------------------------------------------------------------------------
# Decoding OTLP protobuf into the records
# --------------------------------------------------------------------------


def any_value_to_python(value: common_pb2.AnyValue) -> Any:
    """Decode an OTLP ``AnyValue`` into str/bool/int/float/bytes/list/dict/None."""
    field = value.WhichOneof("value")
    if field is None:
        return None
    if field == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if field == "kvlist_value":
        return attributes_to_dict(value.kvlist_value.values)
    if field in ("string_value", "bool_value", "int_value", "double_value", "bytes_value"):
        return getattr(value, field)
    raise ValueError(f"unsupported AnyValue field {field!r}")


def attributes_to_dict(attributes: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    """Decode repeated OTLP ``KeyValue`` into a dict (a repeated key: last wins)."""
    return {kv.key: any_value_to_python(kv.value) for kv in attributes}


def _hex(raw: bytes) -> str:
    return raw.hex()


def _span_kind_name(kind: trace_pb2.Span.SpanKind.ValueType) -> str:
    try:
        return trace_pb2.Span.SpanKind.Name(kind).removeprefix("SPAN_KIND_")
    except ValueError:  # a value newer than this proto package
        return f"UNKNOWN_{int(kind)}"


def _temporality_name(temporality: metrics_pb2.AggregationTemporality.ValueType) -> str:
    try:
        name = metrics_pb2.AggregationTemporality.Name(temporality)
    except ValueError:
        return f"unknown_{int(temporality)}"
    return name.removeprefix("AGGREGATION_TEMPORALITY_").lower()


def _decode_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_to_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        resource=resource,
                        scope=scope_spans.scope.name,
                        scope_version=scope_spans.scope.version,
                        name=span.name,
                        trace_id=_hex(span.trace_id),
                        span_id=_hex(span.span_id),
                        parent_span_id=_hex(span.parent_span_id),
                        kind=_span_kind_name(span.kind),
                        attributes=attributes_to_dict(span.attributes),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        events=[(e.name, attributes_to_dict(e.attributes)) for e in span.events],
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                    )
                )
    return spans


def _number_value(point: metrics_pb2.NumberDataPoint) -> int | float | None:
    field = point.WhichOneof("value")
    return None if field is None else getattr(point, field)


def _optional(message: Message, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _decode_points(metric: metrics_pb2.Metric, kind: str) -> list[ReceivedPoint]:
    data = getattr(metric, kind)
    points = []
    for p in data.data_points:
        common = {
            "attributes": attributes_to_dict(p.attributes),
            "start_time_unix_nano": p.start_time_unix_nano,
            "time_unix_nano": p.time_unix_nano,
        }
        if kind in ("sum", "gauge"):
            points.append(ReceivedPoint(**common, value=_number_value(p)))
        elif kind == "histogram":
            points.append(
                ReceivedPoint(
                    **common,
                    count=p.count,
                    sum=_optional(p, "sum"),
                    bucket_counts=tuple(p.bucket_counts),
                    explicit_bounds=tuple(p.explicit_bounds),
                    min=_optional(p, "min"),
                    max=_optional(p, "max"),
                )
            )
        elif kind == "exponential_histogram":
            points.append(
                ReceivedPoint(
                    **common,
                    count=p.count,
                    sum=_optional(p, "sum"),
                    min=_optional(p, "min"),
                    max=_optional(p, "max"),
                )
            )
        else:  # summary
            points.append(ReceivedPoint(**common, count=p.count, sum=p.sum))
    return points


def _decode_metrics(request: metrics_service_pb2.ExportMetricsServiceRequest) -> list[ReceivedMetric]:
    metrics = []
    for resource_metrics in request.resource_metrics:
        resource = attributes_to_dict(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    raise ValueError(f"metric {metric.name!r} has no data")
                data = getattr(metric, kind)
                metrics.append(
                    ReceivedMetric(
                        resource=resource,
                        scope=scope_metrics.scope.name,
                        scope_version=scope_metrics.scope.version,
                        name=metric.name,
                        unit=metric.unit,
                        description=metric.description,
                        kind=kind,
                        is_monotonic=data.is_monotonic if kind == "sum" else None,
                        temporality=(
                            _temporality_name(data.aggregation_temporality)
                            if kind in ("sum", "histogram", "exponential_histogram")
                            else None
                        ),
                        points=_decode_points(metric, kind),
                    )
                )
    return metrics


def _decode_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[ReceivedLog]:
    logs = []
    for resource_logs in request.resource_logs:
        resource = attributes_to_dict(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                logs.append(
                    ReceivedLog(
                        resource=resource,
                        scope=scope_logs.scope.name,
                        body=any_value_to_python(record.body),
                        severity_text=record.severity_text,
                        severity_number=record.severity_number,
                        attributes=attributes_to_dict(record.attributes),
                        trace_id=_hex(record.trace_id),
                        span_id=_hex(record.span_id),
                        time_unix_nano=record.time_unix_nano,
                        observed_time_unix_nano=record.observed_time_unix_nano,
                    )
                )
    return logs


@dataclass(frozen=True)
class _Signal:
    name: str
    request_type: type[Message]
    response_type: type[Message]
    decode: Callable[[Any], list[Any]]


_SIGNALS: dict[str, _Signal] = {
    "/v1/traces": _Signal(
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        _decode_spans,
    ),
    "/v1/metrics": _Signal(
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        _decode_metrics,
    ),
    "/v1/logs": _Signal(
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        _decode_logs,
    ),
}


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a decoded value, for use as a dict key."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class _RejectedRequestError(Exception):
    """Raised while handling a request that gets a 4xx answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: OTLPReceiver) -> None:
        self.receiver = receiver
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called for exceptions escaping a handler (e.g. a client that hung
        # up mid-request): record instead of printing a traceback to stderr.
        error = sys.exc_info()[1]
        self.receiver._record_error(f"connection from {client_address}: {error!r}")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as exporters' sessions expect
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests` and `errors` instead

    def do_POST(self) -> None:
        headers = self._lowercased_headers()
        path = self.path.split("?", 1)[0]
        body = b""
        try:
            body = self._read_body(headers)
            signal = _SIGNALS.get(path)
            if signal is None:
                raise _RejectedRequestError(404, f"unknown OTLP path {path!r}")
            records = self._decode(signal, headers, body)
        except _RejectedRequestError as rejected:
            self.server.receiver._record_request(
                ReceivedRequest("POST", path, headers, len(body), rejected.status),
                error=f"POST {path}: {rejected.status} {rejected}",
            )
            self._answer(rejected.status, b"", "text/plain")
            return
        # Record before answering: once an exporter's export() has returned,
        # what it sent must already be visible to the test.
        status = self.server.receiver.status
        accepted = 200 <= status < 300
        self.server.receiver._record_request(
            ReceivedRequest("POST", path, headers, len(body), status),
            signal=signal.name if accepted else None,
            records=records,
        )
        response = signal.response_type().SerializeToString() if accepted else b""
        self._answer(status, response, _PROTOBUF_CONTENT_TYPE)

    def _lowercased_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _read_body(self, headers: Mapping[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length_header = headers.get("content-length")
        if length_header is None:
            raise _RejectedRequestError(411, "no Content-Length")
        try:
            length = int(length_header)
        except ValueError:
            raise _RejectedRequestError(400, f"bad Content-Length {length_header!r}") from None
        if not 0 <= length <= _MAX_BODY_BYTES:
            self.close_connection = True
            raise _RejectedRequestError(413, f"body of {length} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise _RejectedRequestError(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _RejectedRequestError(400, f"bad chunk size line {size_line!r}") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY_BYTES:
                self.close_connection = True
                raise _RejectedRequestError(413, f"chunked body over {_MAX_BODY_BYTES} bytes")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # CRLF after the chunk

    def _decode(self, signal: _Signal, headers: Mapping[str, str], body: bytes) -> list[Any]:
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != _PROTOBUF_CONTENT_TYPE:
            raise _RejectedRequestError(
                415, f"Content-Type {content_type!r}: only {_PROTOBUF_CONTENT_TYPE} is supported"
            )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("identity", "none", ""):
                raise _RejectedRequestError(415, f"unsupported Content-Encoding {encoding!r}")
        except (OSError, EOFError, zlib.error) as error:
            raise _RejectedRequestError(400, f"cannot decompress {encoding} body: {error}") from None
        message = signal.request_type()
        try:
            message.ParseFromString(body)
            return signal.decode(message)
        except (DecodeError, ValueError) as error:
            raise _RejectedRequestError(400, f"cannot decode {signal.name} request: {error}") from None

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


# --------------------------------------------------------------------------
# The receiver
# --------------------------------------------------------------------------


class OTLPReceiver:
    """An OTLP/HTTP (protobuf) backend on a loopback port, for tests.

    ``port=0`` picks a free port; ``status`` is the HTTP status answered to
    well-formed requests (settable at any time, e.g. to let a failing backend
    recover).
    """

    _SIGNAL_NAMES: ClassVar[tuple[str, ...]] = ("traces", "metrics", "logs")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status: int = 200) -> None:
        self._host = host
        self._requested_port = port
        self._status = status
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # An RLock, so predicates given to wait_for() may call query methods.
        self._cond = threading.Condition(threading.RLock())
        self._requests: list[ReceivedRequest] = []
        self._errors: list[str] = []
        self._spans: list[ReceivedSpan] = []
        self._metrics: list[ReceivedMetric] = []
        self._logs: list[ReceivedLog] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> OTLPReceiver:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("OTLPReceiver already started")
        self._server = _Server((self._host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open client connections. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # returns once serve_forever() has exited
        server.server_close()
        with server.connections_lock:
            connections = list(server.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes keep-alive handler threads
        if thread is not None:
            thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("OTLPReceiver not started")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. ``http://127.0.0.1:4318``.

        The exporters append ``/v1/traces`` etc. to it. For the per-signal
        variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) use
        ``signal_endpoint("traces")``, since those are taken verbatim.
        """
        return f"http://{self._host}:{self.port}"

    def signal_endpoint(self, signal: str) -> str:
        """Full URL for one signal: ``"traces"``, ``"metrics"`` or ``"logs"``."""
        if signal not in self._SIGNAL_NAMES:
            raise ValueError(f"signal must be one of {self._SIGNAL_NAMES}, not {signal!r}")
        return f"{self.endpoint}/v1/{signal}"

    @property
    def status(self) -> int:
        """HTTP status answered to well-formed requests."""
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        self._status = value

    # -- recording (called from handler threads) ---------------------------

    def _record_request(
        self,
        request: ReceivedRequest,
        *,
        signal: str | None = None,
        records: list[Any] | None = None,
        error: str | None = None,
    ) -> None:
        with self._cond:
            self._requests.append(request)
            if error is not None:
                self._errors.append(error)
            if signal == "traces":
                self._spans.extend(records or ())
            elif signal == "metrics":
                self._metrics.extend(records or ())
            elif signal == "logs":
                self._logs.extend(records or ())
            self._cond.notify_all()

    def _record_error(self, error: str) -> None:
        with self._cond:
            self._errors.append(error)
            self._cond.notify_all()

    # -- queries -----------------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, in arrival order, accepted or not."""
        with self._cond:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Descriptions of requests that were rejected or broke mid-way."""
        with self._cond:
            return list(self._errors)

    def spans(self, name: str | None = None) -> list[ReceivedSpan]:
        """Accepted spans in arrival order, optionally only those named ``name``."""
        with self._cond:
            return [s for s in self._spans if name is None or s.name == name]

    def metrics(self, name: str | None = None) -> list[ReceivedMetric]:
        """Accepted metrics (one per metric per export), optionally by name."""
        with self._cond:
            return [m for m in self._metrics if name is None or m.name == name]

    def logs(self) -> list[ReceivedLog]:
        """Accepted log records in arrival order."""
        with self._cond:
            return list(self._logs)

    def resources(self) -> list[dict[str, Any]]:
        """Distinct resource attribute dicts of accepted data, first seen first."""
        with self._cond:
            seen: dict[Any, dict[str, Any]] = {}
            records: list[ReceivedSpan | ReceivedMetric | ReceivedLog] = [*self._spans, *self._metrics, *self._logs]
            for record in records:
                seen.setdefault(_freeze(record.resource), record.resource)
            return list(seen.values())

    def metric_points(self, name: str) -> list[ReceivedPoint]:
        """All points of metric ``name`` across all exports, in arrival order."""
        return [point for metric in self.metrics(name) for point in metric.points]

    def latest_sum(self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any) -> int | float:
        """Total of a sum (or gauge) metric across processes.

        Only points whose attributes include all of ``attributes`` and
        ``attrs`` count (pass dotted keys such as ``http.route`` in the
        ``attributes`` mapping). A *series* is one process (its
        ``service.instance.id``, or its whole resource when it has none) and
        one attribute set. Each cumulative series contributes its latest
        value; each delta series the sum of its points. Returns 0 when
        nothing matches.

        With one process per gunicorn worker, this is the fleet-wide total.
        """
        return self._series_total(name, {**(attributes or {}), **attrs}, ("sum", "gauge"), "value")

    def latest_count(self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any) -> int:
        """Like ``latest_sum`` but for the ``count`` of histogram points.

        E.g. the number of requests recorded by ``http.server.request.duration``
        across all workers.
        """
        total = self._series_total(
            name, {**(attributes or {}), **attrs}, ("histogram", "exponential_histogram", "summary"), "count"
        )
        return int(total)

    def _series_total(self, name: str, wanted: Mapping[str, Any], kinds: tuple[str, ...], field: str) -> int | float:
        latest: dict[Any, tuple[int, int | float]] = {}
        deltas: dict[Any, int | float] = {}
        for metric in self.metrics(name):
            if metric.kind not in kinds:
                raise ValueError(f"metric {name!r} is a {metric.kind}, expected one of {kinds}")
            resource = metric.resource
            process = resource.get("service.instance.id", _freeze(resource))
            for point in metric.points:
                if not all(k in point.attributes and point.attributes[k] == v for k, v in wanted.items()):
                    continue
                value = getattr(point, field) or 0
                series = (process, _freeze(point.attributes))
                if metric.temporality == "delta":
                    deltas[series] = deltas.get(series, 0) + value
                elif series not in latest or point.time_unix_nano >= latest[series][0]:
                    latest[series] = (point.time_unix_nano, value)
        return sum(value for _, value in latest.values()) + sum(deltas.values())

    # -- waiting -----------------------------------------------------------

    def wait_for(self, predicate: Callable[[OTLPReceiver], Any], timeout: float) -> bool:
        """Block until ``predicate(self)`` is truthy or ``timeout`` seconds pass.

        The predicate is checked now and after every received request (no
        polling). Returns whether it became true.
        """
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout=timeout))

    def clear(self) -> None:
        """Forget everything received so far (requests, errors and data)."""
        with self._cond:
            self._requests.clear()
            self._errors.clear()
            self._spans.clear()
            self._metrics.clear()
            self._logs.clear()
