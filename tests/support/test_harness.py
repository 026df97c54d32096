"""Self-tests of the test harness in ``tests/support``, against the real things.

Real OTLP exporters from ``opentelemetry-exporter-otlp-proto-http``, a real
PostgreSQL server, real sockets and real child processes: if these pass, a
failure elsewhere is about otel-render, not about its test doubles.
"""

from __future__ import annotations

import json
import signal
import socket
import socketserver
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from support.otlp_receiver import OTLPReceiver
from support.postgres import PostgresCluster
from support.processes import (
    AppProcess,
    AppProcessError,
    HTTPResult,
    free_port,
    gunicorn_command,
    http_request,
    pid_is_gone,
    venv_bin,
)
from support.tcp_proxy import TCPProxy

pytestmark = pytest.mark.integration


def _resource(instance: str = "instance-1") -> Resource:
    return Resource.create({"service.name": "harness-test", "service.instance.id": instance})


def _tracer_provider(receiver: OTLPReceiver, **exporter_kwargs: Any) -> TracerProvider:
    provider = TracerProvider(resource=_resource())
    exporter = OTLPSpanExporter(endpoint=receiver.signal_endpoint("traces"), **exporter_kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _meter_provider(receiver: OTLPReceiver, instance: str) -> MeterProvider:
    exporter = OTLPMetricExporter(endpoint=receiver.signal_endpoint("metrics"))
    # A reader that never fires by itself: the test exports with force_flush().
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(resource=_resource(instance), metric_readers=[reader])


# --------------------------------------------------------------------------
# OTLPReceiver
# --------------------------------------------------------------------------


def test_receiver_decodes_spans_from_the_real_exporter(otlp_receiver: OTLPReceiver) -> None:
    provider = _tracer_provider(otlp_receiver, headers={"Authorization": "Bearer t0ken"})
    tracer = provider.get_tracer("harness.scope", "1.2.3")
    with (
        tracer.start_as_current_span(
            "GET /orders",
            kind=SpanKind.SERVER,
            attributes={"http.route": "/orders", "n": 7, "ratio": 0.5, "ok": True, "tags": ["a", "b"]},
        ) as parent,
        tracer.start_as_current_span("db query") as child,
    ):
        child.add_event("retry", {"attempt": 2})
        child.set_status(Status(StatusCode.ERROR, "timed out"))
    provider.shutdown()

    spans = {span.name: span for span in otlp_receiver.spans()}
    assert set(spans) == {"GET /orders", "db query"}
    server, db = spans["GET /orders"], spans["db query"]
    assert server.trace_id == format(parent.get_span_context().trace_id, "032x")
    assert server.span_id == format(parent.get_span_context().span_id, "016x")
    assert server.parent_span_id == ""
    assert db.parent_span_id == server.span_id
    assert db.trace_id == server.trace_id
    assert db.span_id == format(child.get_span_context().span_id, "016x")
    assert server.kind == SpanKind.SERVER.name
    assert db.kind == SpanKind.INTERNAL.name
    assert server.attributes == {"http.route": "/orders", "n": 7, "ratio": 0.5, "ok": True, "tags": ["a", "b"]}
    assert (db.status_code, db.status_message) == (2, "timed out")
    assert db.events == [("retry", {"attempt": 2})]
    assert (server.scope, server.scope_version) == ("harness.scope", "1.2.3")
    assert server.resource["service.name"] == "harness-test"
    assert server.resource["service.instance.id"] == "instance-1"
    assert server.start_time_unix_nano <= db.start_time_unix_nano <= db.end_time_unix_nano <= server.end_time_unix_nano

    requests = otlp_receiver.requests
    assert [r.path for r in requests] == ["/v1/traces", "/v1/traces"]  # one per span (simple processor)
    assert all(r.header("Authorization") == "Bearer t0ken" for r in requests)
    assert all(r.headers["content-type"] == "application/x-protobuf" and r.status == 200 for r in requests)
    assert otlp_receiver.resources() == [server.resource]
    assert otlp_receiver.errors == []


@pytest.mark.parametrize("compression", [Compression.Gzip, Compression.Deflate])
def test_receiver_decompresses(otlp_receiver: OTLPReceiver, compression: Compression) -> None:
    provider = _tracer_provider(otlp_receiver, compression=compression)
    with provider.get_tracer("t").start_as_current_span("compressed", attributes={"blob": "x" * 5000}):
        pass
    provider.shutdown()

    (request,) = otlp_receiver.requests
    assert request.header("content-encoding") == compression.value
    assert request.body_size < 1000  # 5000 repeated bytes really were compressed
    (span,) = otlp_receiver.spans()
    assert span.attributes == {"blob": "x" * 5000}


def test_receiver_decodes_metrics_of_every_common_kind(otlp_receiver: OTLPReceiver) -> None:
    provider = _meter_provider(otlp_receiver, "instance-1")
    meter = provider.get_meter("harness.meter")
    requests = meter.create_counter("requests", unit="{request}", description="Requests served")
    in_flight = meter.create_up_down_counter("in_flight")
    duration = meter.create_histogram("duration", unit="s")
    meter.create_observable_gauge("temperature", callbacks=[lambda _options: [Observation(21.5)]])

    requests.add(2, {"route": "/a"})
    requests.add(3, {"route": "/b"})
    in_flight.add(4)
    in_flight.add(-1)
    for seconds in (0.003, 0.2, 7.0):
        duration.record(seconds, {"route": "/a"})
    assert provider.force_flush()  # one export (shutdown() would send another)

    by_name = {metric.name: metric for metric in otlp_receiver.metrics()}
    assert set(by_name) == {"requests", "in_flight", "duration", "temperature"}

    counter = by_name["requests"]
    assert (counter.kind, counter.is_monotonic, counter.temporality) == ("sum", True, "cumulative")
    assert (counter.unit, counter.description, counter.scope) == ("{request}", "Requests served", "harness.meter")
    assert {p.attributes["route"]: p.value for p in counter.points} == {"/a": 2, "/b": 3}
    assert all(isinstance(p.value, int) for p in counter.points)

    up_down = by_name["in_flight"]
    assert (up_down.kind, up_down.is_monotonic, [p.value for p in up_down.points]) == ("sum", False, [3])

    (gauge_point,) = by_name["temperature"].points
    assert (by_name["temperature"].kind, by_name["temperature"].temporality) == ("gauge", None)
    assert gauge_point.value == 21.5

    histogram = by_name["duration"]
    (point,) = histogram.points
    assert (histogram.kind, histogram.temporality, histogram.is_monotonic) == ("histogram", "cumulative", None)
    assert point.count == 3
    assert point.sum == pytest.approx(7.203)
    assert point.min == pytest.approx(0.003)
    assert point.max == pytest.approx(7.0)
    assert point.explicit_bounds is not None and point.bucket_counts is not None
    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
    assert sum(point.bucket_counts) == 3
    assert point.time_unix_nano >= point.start_time_unix_nano > 0

    assert otlp_receiver.metric_points("requests") == counter.points
    provider.shutdown()


def test_latest_sum_and_count_total_the_latest_value_of_each_process(otlp_receiver: OTLPReceiver) -> None:
    # Two "gunicorn workers", each exporting cumulative values twice.
    workers = [_meter_provider(otlp_receiver, f"worker-{n}") for n in (1, 2)]
    counters = [w.get_meter("m").create_counter("hits") for w in workers]
    histograms = [w.get_meter("m").create_histogram("latency") for w in workers]
    for _export in range(2):
        for counter, histogram, worker in zip(counters, histograms, workers, strict=True):
            counter.add(10, {"http.route": "/x"})
            counter.add(1, {"http.route": "/y"})
            histogram.record(0.1, {"http.route": "/x"})
            assert worker.force_flush()
    for worker in workers:
        worker.shutdown()

    # Each worker's latest cumulative /x value is 20; older exports must not be added.
    assert len(otlp_receiver.metric_points("hits")) >= 8
    assert otlp_receiver.latest_sum("hits", {"http.route": "/x"}) == 40
    assert otlp_receiver.latest_sum("hits", {"http.route": "/y"}) == 4
    assert otlp_receiver.latest_sum("hits") == 44
    assert otlp_receiver.latest_sum("hits", {"http.route": "/nope"}) == 0
    assert otlp_receiver.latest_count("latency", {"http.route": "/x"}) == 4
    with pytest.raises(ValueError, match="histogram"):
        otlp_receiver.latest_sum("latency")


def test_receiver_decodes_logs_with_trace_context(otlp_receiver: OTLPReceiver) -> None:
    logger_provider = LoggerProvider(resource=_resource())
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=otlp_receiver.signal_endpoint("logs")))
    )
    tracer_provider = TracerProvider()
    with tracer_provider.get_tracer("t").start_as_current_span("with-log") as span:
        logger_provider.get_logger("harness.logs").emit(
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body={"message": "disk full", "paths": ["/data", "/tmp"], "raw": b"\x00\x01"},
            attributes={"disk.free": 0},
        )
    logger_provider.shutdown()

    (record,) = otlp_receiver.logs()
    assert record.body == {"message": "disk full", "paths": ["/data", "/tmp"], "raw": b"\x00\x01"}
    assert (record.severity_text, record.severity_number) == ("WARN", SeverityNumber.WARN.value)
    assert record.attributes == {"disk.free": 0}
    assert record.scope == "harness.logs"
    assert record.trace_id == format(span.get_span_context().trace_id, "032x")
    assert record.span_id == format(span.get_span_context().span_id, "016x")
    assert record.resource["service.instance.id"] == "instance-1"


def test_failing_backend_makes_the_exporter_fail_then_recovers(otlp_receiver: OTLPReceiver) -> None:
    otlp_receiver.status = 503
    exporter = OTLPSpanExporter(endpoint=otlp_receiver.signal_endpoint("traces"), timeout=1.0)
    provider = TracerProvider(resource=_resource())
    with provider.get_tracer("t").start_as_current_span("lost") as span:
        pass

    assert exporter.export([span]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert otlp_receiver.requests and all(r.status == 503 for r in otlp_receiver.requests)
    assert otlp_receiver.spans() == []  # a failing backend accepts nothing

    otlp_receiver.status = 200
    assert exporter.export([span]) is SpanExportResult.SUCCESS  # type: ignore[list-item]
    assert [s.name for s in otlp_receiver.spans()] == ["lost"]
    exporter.shutdown()


@pytest.mark.parametrize(
    ("path", "headers", "body", "status"),
    [
        ("/v1/traces", {"Content-Type": "application/x-protobuf"}, b"\xff\xff\xff not protobuf", 400),
        ("/v1/metrics", {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, b"not gzip", 400),
        ("/v1/logs", {"Content-Type": "application/json"}, b"{}", 415),
        ("/v1/profiles", {"Content-Type": "application/x-protobuf"}, b"", 404),
    ],
)
def test_receiver_rejects_malformed_requests_and_keeps_serving(
    otlp_receiver: OTLPReceiver, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    result = http_request(f"{otlp_receiver.endpoint}{path}", "POST", headers=headers, body=body)
    assert result.status == status
    assert len(otlp_receiver.errors) == 1 and path in otlp_receiver.errors[0]
    assert otlp_receiver.requests[0].status == status

    provider = _tracer_provider(otlp_receiver)
    with provider.get_tracer("t").start_as_current_span("still-served"):
        pass
    provider.shutdown()
    assert [s.name for s in otlp_receiver.spans()] == ["still-served"]


def test_receiver_records_headers_exactly_as_sent(otlp_receiver: OTLPReceiver) -> None:
    http_request(
        otlp_receiver.signal_endpoint("traces"),
        "POST",
        headers=[("Content-Type", "application/x-protobuf"), ("X-Dup", "a"), ("x-dup", "b"), ("AUTHORIZATION", "k")],
        body=b"",
    )
    (request,) = otlp_receiver.requests
    assert request.status == 200  # an empty request is a valid, empty export
    assert request.headers["x-dup"] == "a, b"
    assert request.header("Authorization") == "k"


def test_wait_for_times_out_then_wakes_on_arrival(otlp_receiver: OTLPReceiver) -> None:
    started = time.monotonic()
    assert otlp_receiver.wait_for(lambda r: r.spans(), timeout=0.2) is False
    assert time.monotonic() - started >= 0.2

    provider = _tracer_provider(otlp_receiver)
    with provider.get_tracer("t").start_as_current_span("first"):
        pass

    # Export the second span from another thread once the test is blocked in
    # wait_for(): only a notification on arrival can wake it up in time.
    waiting = threading.Event()

    def two_spans(receiver: OTLPReceiver) -> bool:
        waiting.set()
        return len(receiver.spans()) == 2

    def export_later() -> None:
        assert waiting.wait(timeout=5)
        with provider.get_tracer("t").start_as_current_span("second"):
            pass

    thread = threading.Thread(target=export_later)
    thread.start()
    started = time.monotonic()
    assert otlp_receiver.wait_for(two_spans, timeout=10) is True
    assert time.monotonic() - started < 5
    thread.join()
    provider.shutdown()

    otlp_receiver.clear()
    assert (otlp_receiver.spans(), otlp_receiver.requests, otlp_receiver.resources()) == ([], [], [])


def test_receiver_picks_a_free_port_and_stops() -> None:
    with OTLPReceiver() as first, OTLPReceiver() as second:
        assert first.port != second.port
        assert first.endpoint == f"http://127.0.0.1:{first.port}"
        port = first.port
    with pytest.raises(ConnectionRefusedError):
        http_request(f"http://127.0.0.1:{port}/v1/traces", "POST", body=b"")


# --------------------------------------------------------------------------
# PostgresCluster
# --------------------------------------------------------------------------


def _connect(dsn: str) -> psycopg2.extensions.connection:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    return connection


def _query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    connection = _connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def test_postgres_lifecycle_keeps_data_across_stop_and_crash(
    postgres_factory: Callable[[], PostgresCluster],
) -> None:
    cluster = postgres_factory()
    dsn = cluster.dsn(connect_timeout=5)
    assert _query(dsn, "SELECT current_user, current_database()") == [("app", "app")]
    _query(dsn, "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1)")

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(cluster.dsn(password="wrong", connect_timeout=5))
    assert cluster.url() == f"postgresql+psycopg2://app:s3cret-pw@127.0.0.1:{cluster.port}/app"

    port = cluster.port
    cluster.stop()
    assert not cluster.is_running()
    with pytest.raises(psycopg2.OperationalError, match="Connection refused"):
        psycopg2.connect(dsn)

    cluster.start()
    assert cluster.port == port
    _query(dsn, "INSERT INTO orders VALUES (2)")  # committed, then the server crashes

    cluster.kill()
    assert not cluster.is_running()
    cluster.start()
    assert _query(dsn, "SELECT id FROM orders ORDER BY id") == [(1,), (2,)]
    assert "not properly shut down" in cluster.log()  # crash recovery really ran
    assert cluster.psql("SELECT count(*) FROM orders", dbname="app") == "2"


def test_postgres_cleanup_removes_everything(postgres_factory: Callable[[], PostgresCluster]) -> None:
    cluster = postgres_factory()
    base_dir = cluster.base_dir
    assert base_dir is not None and Path(base_dir, "data", "PG_VERSION").is_file()
    cluster.cleanup()
    assert not cluster.is_running()
    assert not Path(base_dir).exists()


# --------------------------------------------------------------------------
# TCPProxy
# --------------------------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address  # type: ignore[misc]
    server.shutdown()
    server.server_close()


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_tcp_proxy_blackhole_holds_bytes_until_forward(
    echo_server: tuple[str, int], tcp_proxy_factory: Callable[[str, int], TCPProxy]
) -> None:
    proxy = tcp_proxy_factory(*echo_server)
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert _echo(held, b"ping") == b"ping"
    assert proxy.connections() == 1

    proxy.blackhole()
    held.settimeout(0.3)
    held.sendall(b"held back")
    with pytest.raises(TimeoutError):
        held.recv(100)
    late = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)  # accepted, then silence
    late.settimeout(0.3)
    late.sendall(b"late")
    with pytest.raises(TimeoutError):
        late.recv(100)
    assert proxy.connections() == 2

    proxy.forward()
    held.settimeout(5)
    late.settimeout(5)
    assert held.recv(100) == b"held back"
    assert late.recv(100) == b"late"
    assert _echo(held, b"again") == b"again"
    held.close()
    late.close()


def test_tcp_proxy_refuse_closes_and_refuses_then_forward_reopens(
    echo_server: tuple[str, int], tcp_proxy_factory: Callable[[str, int], TCPProxy]
) -> None:
    proxy = tcp_proxy_factory(*echo_server)
    existing = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert _echo(existing, b"x") == b"x"

    proxy.refuse()
    assert existing.recv(100) == b""  # closed by the proxy
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)

    proxy.forward()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as fresh:
        assert _echo(fresh, b"back") == b"back"
    assert proxy.accepted == 2
    existing.close()


def test_tcp_proxy_in_front_of_postgres(
    postgres: PostgresCluster, tcp_proxy_factory: Callable[[str, int], TCPProxy]
) -> None:
    proxy = tcp_proxy_factory(postgres.host, postgres.port)
    dsn = f"host=127.0.0.1 port={proxy.port} user=app password={postgres.password} dbname=app connect_timeout=2"
    connection = _connect(dsn)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 41 + 1")
        assert cursor.fetchone() == (42,)

    # A hung database: connecting gets no answer, and libpq gives up at its
    # deadline (connect_timeout has a 2 s minimum).
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        psycopg2.connect(dsn)
    assert 1.5 <= time.monotonic() - started < 10

    proxy.refuse()
    with pytest.raises(psycopg2.OperationalError), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert connection.closed

    proxy.forward()
    assert _query(dsn, "SELECT 'through the proxy'") == [("through the proxy",)]


# --------------------------------------------------------------------------
# AppProcess and friends
# --------------------------------------------------------------------------


def test_app_process_serves_http_and_stops(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from the child")
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with AppProcess(command, cwd=tmp_path) as app:
        first = app.wait_http(f"http://127.0.0.1:{port}/", expect_status=200)
        assert first.status == 200
        result = http_request(f"http://127.0.0.1:{port}/hello.txt")
        assert (result.status, result.text) == (200, "hello from the child")
        assert result.header("CONTENT-LENGTH") == str(len(result.body))
        assert http_request(f"http://127.0.0.1:{port}/missing").status == 404
        assert app.children() == []
        assert app.stop() == -signal.SIGTERM  # http.server dies of the signal
        assert not app.killed_after_timeout
        assert "Serving HTTP on 127.0.0.1" in app.stdout()
        assert '"GET /hello.txt HTTP/1.1" 200' in app.stderr()
    assert "GET /missing" in app.output()  # still readable after the files are gone


def test_wait_http_raises_with_output_when_the_process_dies_early() -> None:
    command = [sys.executable, "-c", "import sys; print('config error: no PORT'); sys.exit(3)"]
    with AppProcess(command) as app, pytest.raises(AppProcessError, match="exited with 3") as raised:
        app.wait_http(f"http://127.0.0.1:{free_port()}/", timeout=20)
    assert "config error: no PORT" in str(raised.value)


def test_wait_http_times_out_with_output() -> None:
    with AppProcess([sys.executable, "-c", "print('up but not listening'); import time; time.sleep(60)"]) as app:
        with pytest.raises(AppProcessError, match=r"did not answer within 0\.5s") as raised:
            app.wait_http(f"http://127.0.0.1:{free_port()}/", timeout=0.5)
        assert "up but not listening" in str(raised.value)


def test_app_process_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "leaked-from-the-runner")
    monkeypatch.setenv("DROP_ME", "x")
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    with AppProcess([sys.executable, "-c", script], env={"RENDER": "true", "PATH": None}) as app:
        assert app.wait(timeout=20) == 0
        env = json.loads(app.stdout())
    assert env["RENDER"] == "true"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "OTEL_SERVICE_NAME" not in env and "DROP_ME" not in env and "PATH" not in env


def test_stop_kills_the_group_after_timeout_and_reports_stragglers() -> None:
    # The child ignores SIGTERM; its own child (a "worker") would outlive it.
    script = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    with AppProcess([sys.executable, "-c", script]) as app:
        deadline = time.monotonic() + 20
        while not (app.children() and "ready" in app.stdout()):
            assert app.is_running() and time.monotonic() < deadline, app.describe()
            time.sleep(0.02)
        (worker,) = app.children()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert app.stop(timeout=0.5) == -signal.SIGKILL
        assert app.killed_after_timeout
        assert any("did not exit within 0.5s" in str(w.message) for w in caught)
        assert pid_is_gone(worker)


def test_stop_reports_group_members_left_behind() -> None:
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        time.sleep(60)
        """
    )
    with AppProcess([sys.executable, "-c", script]) as app:
        deadline = time.monotonic() + 20
        while not app.children():
            assert time.monotonic() < deadline, app.describe()
            time.sleep(0.02)
        (orphan,) = app.children()
        assert app.stop() == -signal.SIGTERM  # the child dies, its own child does not
        assert app.stragglers == [orphan]
        assert pid_is_gone(orphan)


def test_gunicorn_command_and_a_real_gunicorn(tmp_path: Path) -> None:
    gunicorn = venv_bin("gunicorn")
    with pytest.raises(FileNotFoundError, match="no-such-tool"):
        venv_bin("no-such-tool")

    port = free_port()
    assert gunicorn_command("app:app", port=port, workers=3, preload=True, timeout=5, instrument=False,
                            extra=["--log-level", "info"]) == [
        gunicorn, "-b", f"127.0.0.1:{port}", "-w", "3", "--preload", "-k", "sync", "--timeout", "5",
        "--log-level", "info", "app:app",
    ]  # fmt: skip
    instrumented = gunicorn_command("app:app", port=port)
    assert Path(instrumented[0]).name == "opentelemetry-instrument" and instrumented[1] == gunicorn
    assert "--preload" not in instrumented

    (tmp_path / "hello_app.py").write_text(
        textwrap.dedent(
            """
            import os

            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [str(os.getpid()).encode()]
            """
        )
    )
    command = gunicorn_command("hello_app:app", port=port, workers=2, instrument=False)
    with AppProcess(command, cwd=tmp_path) as app:
        assert app.wait_http(f"http://127.0.0.1:{port}/", expect_status=200).status == 200
        deadline = time.monotonic() + 20
        while len(app.children()) < 2:
            assert time.monotonic() < deadline, app.describe()
            time.sleep(0.02)
        workers = app.children()
        assert int(http_request(f"http://127.0.0.1:{port}/").text) in workers
        assert app.stop() == 0  # gunicorn shuts down gracefully on SIGTERM
        assert app.stragglers == []
        assert all(pid_is_gone(pid) for pid in workers)


def test_http_request_never_raises_for_error_statuses_but_does_for_no_server() -> None:
    with OTLPReceiver(status=500) as receiver:
        headers = {"Content-Type": "application/x-protobuf"}
        result = http_request(receiver.signal_endpoint("traces"), "POST", headers=headers, body=b"")
        assert result.status == 500
        assert result.header("content-type") == "application/x-protobuf"
    with pytest.raises(ConnectionRefusedError):
        http_request(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(ValueError, match="http://"):
        http_request("https://example.invalid/")
    assert HTTPResult(200, "OK", [], b'{"a": [1]}').json() == {"a": [1]}
