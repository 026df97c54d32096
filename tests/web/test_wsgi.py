"""The WSGI middleware: spans, correlation, meters, errors, stalls, in process."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import _start_internal_or_server_span
from opentelemetry.instrumentation.wsgi import wsgi_getter
from support.wsgi_calls import call, environ_for

from otel_render import diagnostics, request_context
from otel_render.web import local_routes, wsgi

UUID_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_one_server_span_with_stable_attributes_and_a_scrubbed_query(telemetry):
    response = call(
        wsgi.wrap(hello),
        environ_for("/items/7", query="page=2&api_key=s3cret&token=x", headers={"User-Agent": "curl/8"}),
    )
    assert response.status == "200 OK" and response.body == b"hello"
    (span,) = telemetry.server_spans()
    assert span.name == "GET"
    assert span.parent is None
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == "/items/7"
    assert span.attributes["url.query"] == "page=2&api_key=[redacted]&token=[redacted]"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["user_agent.original"] == "curl/8"
    assert "client.address" not in span.attributes  # only when opted in


def test_a_uuid_request_id_is_the_trace_id_and_is_echoed(telemetry):
    response = call(wsgi.wrap(hello), environ_for(headers={"X-Request-ID": UUID_ID}))
    (span,) = telemetry.server_spans()
    assert f"{span.context.trace_id:032x}" == UUID_ID.replace("-", "")
    assert span.parent is None
    assert span.attributes["correlation.id"] == UUID_ID
    assert response.header("X-Request-ID") == UUID_ID
    assert response.header("traceresponse") == f"00-{UUID_ID.replace('-', '')}-{span.context.span_id:016x}-01"


def test_an_inbound_traceparent_wins_over_the_request_id(telemetry):
    call(wsgi.wrap(hello), environ_for(headers={"traceparent": TRACEPARENT, "X-Request-ID": UUID_ID}))
    (span,) = telemetry.server_spans()
    assert f"{span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert span.attributes["correlation.id"] == UUID_ID


def test_another_valid_id_is_kept_but_starts_a_new_trace(telemetry):
    response = call(wsgi.wrap(hello), environ_for(headers={"X-Correlation-ID": "order-1234"}))
    (span,) = telemetry.server_spans()
    assert span.attributes["correlation.id"] == "order-1234"
    assert response.header("X-Request-ID") == "order-1234"


def test_without_an_id_the_trace_id_is_the_generated_correlation_id(telemetry):
    response = call(wsgi.wrap(hello), environ_for(headers={"X-Request-ID": "evil\r\nSet-Cookie: a=b"}))
    (span,) = telemetry.server_spans()
    generated = f"{span.context.trace_id:032x}"
    assert response.header("X-Request-ID") == generated
    assert "correlation.id" not in span.attributes  # it is the trace id


def test_render_request_id_is_recorded(telemetry):
    call(wsgi.wrap(hello), environ_for(headers={"Rndr-Id": "a1b2c3-xyz"}))
    assert telemetry.server_spans()[0].attributes["render.request.id"] == "a1b2c3-xyz"


def test_the_apps_own_request_id_header_is_not_duplicated(telemetry):
    def own_id(environ, start_response):
        start_response("200 OK", [("x-request-id", "app-made")])
        return [b""]

    response = call(wsgi.wrap(own_id), environ_for(headers={"X-Request-ID": "client-made"}))
    assert [value for key, value in response.headers if key.lower() == "x-request-id"] == ["app-made"]
    assert response.header("traceresponse")


def test_5xx_responses_carry_the_ids_and_mark_the_span(telemetry):
    def broken(environ, start_response):
        start_response("503 Service Unavailable", [])
        return [b"down"]

    response = call(wsgi.wrap(broken), environ_for())
    (span,) = telemetry.server_spans()
    assert response.header("X-Request-ID") and response.header("traceresponse")
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "503"


def test_client_address_only_when_opted_in(telemetry_factory):
    telemetry = telemetry_factory({"OTEL_RENDER_CAPTURE_CLIENT_IP": "true"})
    call(wsgi.wrap(hello), environ_for(headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.1"}))
    assert telemetry.server_spans()[0].attributes["client.address"] == "203.0.113.9"
    telemetry = telemetry_factory({"OTEL_RENDER_CAPTURE_CLIENT_IP": "true"})
    call(wsgi.wrap(hello), environ_for(headers={"X-Forwarded-For": "<script>"}))
    assert "client.address" not in telemetry.server_spans()[0].attributes


def test_client_address_prefers_the_first_forwarded_hop():
    assert (
        wsgi.client_address({"HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.0.0.1", "REMOTE_ADDR": "10.0.0.1"})
        == "203.0.113.9"
    )
    assert wsgi.client_address({"REMOTE_ADDR": "2001:db8::1"}) == "2001:db8::1"
    assert wsgi.client_address({"REMOTE_ADDR": "x; drop"}) is None


# --------------------------------------------------------------------------
# Meters
# --------------------------------------------------------------------------


def test_duration_by_route_template_and_normalised_method(telemetry):
    def routed(environ, start_response):
        wsgi.set_route(environ, "/items/{id}")
        start_response("200 OK", [])
        return [b""]

    app = wsgi.wrap(routed)
    for number in range(3):
        call(app, environ_for(f"/items/{number}"))
    call(app, environ_for("/items/9", method="BREW"))
    points = {
        tuple(sorted(point.attributes.items())): point for point in telemetry.points("http.server.request.duration")
    }
    get = (
        ("http.request.method", "GET"),
        ("http.response.status_code", 200),
        ("http.route", "/items/{id}"),
        ("url.scheme", "http"),
    )
    other = (
        ("http.request.method", "_OTHER"),
        ("http.response.status_code", 200),
        ("http.route", "/items/{id}"),
        ("url.scheme", "http"),
    )
    assert set(points) == {get, other}
    assert points[get].count == 3
    spans = telemetry.server_spans()
    assert spans[0].name == "GET /items/{id}"
    assert spans[-1].attributes["http.request.method_original"] == "BREW"


def test_active_requests_are_observed_while_in_flight(telemetry):
    inside = threading.Event()
    release = threading.Event()

    def slow(environ, start_response):
        inside.set()
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    worker = threading.Thread(target=call, args=(wsgi.wrap(slow), environ_for()))
    worker.start()
    assert inside.wait(10)
    (point,) = telemetry.points("http.server.active_requests")
    assert point.value == 1
    release.set()
    worker.join(10)
    (point,) = telemetry.points("http.server.active_requests")
    assert point.value == 0
    assert telemetry.runtime.system_state() == {"inFlightRequests": 0}


def test_database_statements_are_counted_per_request(telemetry):
    def queries(environ, start_response):
        wsgi.set_route(environ, "/report")
        request_context.add_db_query(0.002)
        request_context.add_db_query(0.003)
        start_response("200 OK", [])
        return [b""]

    call(wsgi.wrap(queries), environ_for("/report"))
    call(wsgi.wrap(hello), environ_for("/none"))
    span = telemetry.server_spans()[0]
    assert span.attributes["otel_render.db.queries"] == 2
    assert span.attributes["otel_render.db.duration"] == pytest.approx(0.005)
    (queries_point,) = telemetry.points("otel_render.http.server.db_queries")
    assert queries_point.sum == 2 and queries_point.count == 1
    assert dict(queries_point.attributes) == {"http.request.method": "GET", "http.route": "/report"}
    (time_point,) = telemetry.points("otel_render.http.server.db_time")
    assert time_point.sum == pytest.approx(0.005)


def test_the_sdk_cardinality_limit_bounds_series(telemetry_factory):
    telemetry = telemetry_factory({"OTEL_RENDER_METRIC_CARDINALITY_LIMIT": "10"})

    def many_routes(environ, start_response):
        wsgi.set_route(environ, environ["PATH_INFO"])  # a bad route template: one per path
        start_response("200 OK", [])
        return [b""]

    app = wsgi.wrap(many_routes)
    for number in range(40):
        call(app, environ_for(f"/r/{number}"))
    points = telemetry.points("http.server.request.duration")
    assert len(points) == 11
    overflow = [point for point in points if point.attributes.get("otel.metric.overflow")]
    assert len(overflow) == 1 and overflow[0].count == 30


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_an_exception_escaping_a_plain_app_is_captured_once(telemetry, caplog):
    def failing(environ, start_response):
        raise RuntimeError("cannot connect: password=hunter2")

    with caplog.at_level(logging.ERROR, logger="otel_render.web"), pytest.raises(RuntimeError):
        call(
            wsgi.wrap(failing),
            environ_for("/pay", query="card=1", headers={"Authorization": "Bearer abc", "X-Request-ID": "req-9"}),
        )
    (span,) = telemetry.server_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == "RuntimeError: cannot connect: password=[redacted]"
    assert span.attributes["error.type"] == "RuntimeError"
    (event,) = [event for event in span.events if event.name == "exception"]
    assert "hunter2" not in event.attributes["exception.message"]
    assert "failing" in event.attributes["exception.stacktrace"]
    (context,) = diagnostics.errors.snapshot()
    assert context.correlationId == "req-9"
    assert context.traceId == f"{span.context.trace_id:032x}"
    assert context.error.type == "builtins.RuntimeError"
    assert "hunter2" not in context.error.message and "hunter2" not in context.error.stack
    assert context.request.method == "GET" and context.request.path == "/pay"
    assert context.request.headers["authorization"] == "[redacted]"
    assert context.request.ip is None
    assert context.system["inFlightRequests"] == 1
    (record,) = [record for record in caplog.records if record.name == "otel_render.web"]
    assert record.error_context["correlationId"] == "req-9"
    assert (telemetry.points("http.server.request.duration")[0].attributes["error.type"]) == "RuntimeError"


def test_an_exception_while_streaming_is_captured(telemetry):
    def stream(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise ValueError("half way")

    with pytest.raises(ValueError):
        call(wsgi.wrap(stream), environ_for())
    (span,) = telemetry.server_spans()
    assert span.attributes["error.type"] == "ValueError"
    assert diagnostics.errors.snapshot()[0].error.message == "half way"


# --------------------------------------------------------------------------
# Context: logs and queries while streaming, no leak into the next request
# --------------------------------------------------------------------------


def test_streamed_chunks_run_in_the_requests_context(telemetry):
    seen = []

    def stream(environ, start_response):
        start_response("200 OK", [])
        for _ in range(2):
            seen.append((trace.get_current_span().get_span_context().trace_id, request_context.current()))
            yield b"x"

    call(wsgi.wrap(stream), environ_for(headers={"X-Request-ID": UUID_ID}))
    assert {trace_id for trace_id, _ in seen} == {int(UUID_ID.replace("-", ""), 16)}
    assert all(work is not None and work.correlation_id == UUID_ID for _, work in seen)


def test_a_client_that_stops_iterating_without_closing_leaks_nothing(telemetry):
    def stream(environ, start_response):
        start_response("200 OK", [])
        yield b"a"
        yield b"b"

    body = wsgi.wrap(stream)(environ_for(), lambda *args: None)
    next(iter(body))  # abandoned: no close()
    assert not trace.get_current_span().get_span_context().is_valid
    assert request_context.current() is None
    call(wsgi.wrap(hello), environ_for())
    assert len(telemetry.server_spans()) == 1  # the next request still gets its span


# --------------------------------------------------------------------------
# Never two server spans
# --------------------------------------------------------------------------


def test_wrapping_twice_makes_one_span(telemetry):
    app = wsgi.wrap(wsgi.wrap(hello))
    assert wsgi.wrap(app) is app
    inner = wsgi.OtelRenderMiddleware(wsgi.OtelRenderMiddleware(hello))
    call(app, environ_for())
    call(inner, environ_for())
    assert len(telemetry.spans.get_finished_spans()) == 2


def test_a_contrib_instrumentation_inside_ours_makes_an_internal_span(telemetry):
    # What opentelemetry-instrumentation-flask/-django do for each request.
    tracer = telemetry.tracer_provider.get_tracer("contrib")

    def contrib_wrapped(environ, start_response):
        span, token = _start_internal_or_server_span(tracer, "contrib", None, environ, wsgi_getter)
        try:
            return hello(environ, start_response)
        finally:
            span.end()
            if token is not None:
                otel_context.detach(token)

    call(wsgi.wrap(contrib_wrapped), environ_for())
    kinds = sorted(span.kind.name for span in telemetry.spans.get_finished_spans())
    assert kinds == ["INTERNAL", "SERVER"]


def test_ours_steps_aside_when_a_contrib_server_span_is_already_active(telemetry):
    tracer = telemetry.tracer_provider.get_tracer("contrib")
    app = wsgi.wrap(hello)
    with tracer.start_as_current_span("contrib", kind=trace.SpanKind.SERVER):
        response = call(app, environ_for())
    assert response.header("X-Request-ID") is None
    assert [span.name for span in telemetry.spans.get_finished_spans()] == ["contrib"]


# --------------------------------------------------------------------------
# Local endpoints
# --------------------------------------------------------------------------


def health(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"status": "healthy"}']


def test_local_endpoints_answer_first_without_a_span(telemetry):
    local_routes.register("/health", health)
    response = call(wsgi.wrap(hello), environ_for("/health"))
    assert response.body == b'{"status": "healthy"}'
    assert telemetry.spans.get_finished_spans() == ()


def test_a_path_the_app_routes_itself_stays_the_apps(telemetry):
    local_routes.register("/health", health)
    local_routes.register("/api/health", health)
    wsgi.add_route_probe(lambda paths: {"/health"} & set(paths))
    app = wsgi.wrap(hello)
    assert call(app, environ_for("/health")).body == b"hello"
    assert call(app, environ_for("/_otel/health")).body == b'{"status": "healthy"}'
    assert call(app, environ_for("/api/health")).body == b'{"status": "healthy"}'


# --------------------------------------------------------------------------
# Stuck requests
# --------------------------------------------------------------------------


def test_the_timeout_fires_before_gunicorns_worker_timeout():
    assert wsgi.effective_timeout_s(30.0, None) == 30.0
    assert wsgi.effective_timeout_s(30.0, 30.0) == 24.0
    assert wsgi.effective_timeout_s(5.0, 30.0) == 5.0


def test_a_stuck_request_is_reported_once_with_its_stack(telemetry_factory, caplog):
    telemetry = telemetry_factory({"OTEL_RENDER_REQUEST_TIMEOUT_S": "5"})
    inside = threading.Event()
    release = threading.Event()

    def wait_for_the_database(environ, start_response):
        wsgi.set_route(environ, "/report")
        inside.set()
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    worker = threading.Thread(
        target=call,
        args=(wsgi.wrap(wait_for_the_database), environ_for("/report", headers={"X-Request-ID": "stuck-1"})),
    )
    worker.start()
    try:
        assert inside.wait(10)
        (request,) = telemetry.runtime.in_flight.values()
        with caplog.at_level(logging.WARNING, logger="otel_render.web"):
            telemetry.runtime.watchdog.tick(now=request.started + 4.9)
            assert diagnostics.stalls.snapshot() == []
            telemetry.runtime.watchdog.tick(now=request.started + 5.5)
            telemetry.runtime.watchdog.tick(now=request.started + 9.0)
    finally:
        release.set()
        worker.join(10)
    (stall,) = diagnostics.stalls.snapshot()
    assert stall.kind == "request" and stall.name == "GET /report"
    assert stall.correlationId == "stuck-1"
    assert stall.running_s == 5.5 and stall.limit_s == 5.0
    assert "wait_for_the_database" in stall.stack and "release.wait" in stall.stack
    (span,) = telemetry.server_spans()
    assert span.attributes["otel_render.request.timed_out"] is True
    (event,) = [event for event in span.events if event.name == "otel_render.request.timeout"]
    assert "wait_for_the_database" in event.attributes["code.stacktrace"]
    (point,) = telemetry.points("otel_render.http.request.timeouts")
    assert point.value == 1 and dict(point.attributes) == {"http.request.method": "GET", "http.route": "/report"}
    (record,) = [record for record in caplog.records if "still running" in record.getMessage()]
    assert record.stall["correlationId"] == "stuck-1"


def test_overdue_is_a_pure_selection():
    class Fake:
        def __init__(self, started, timed_out=False):
            self.started, self.timed_out = started, timed_out

    fresh, old, reported = Fake(100.0), Fake(10.0), Fake(10.0, True)
    assert wsgi.overdue([fresh, old, reported], now=50.0, limit_s=30.0) == [old]


# --------------------------------------------------------------------------
# Hostile headers
# --------------------------------------------------------------------------

SAFE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,128}")
header_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=200),
    st.sampled_from(
        [UUID_ID, TRACEPARENT, "0" * 32, "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "a\r\nX-Evil: 1", "x" * 129]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_id=header_text, correlation_id=header_text, traceparent=header_text, tracestate=header_text)
def test_hostile_ids_never_reach_the_app_or_the_response(
    telemetry, request_id, correlation_id, traceparent, tracestate
):
    calls = []

    def app(environ, start_response):
        calls.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    headers = {
        "X-Request-ID": request_id,
        "X-Correlation-ID": correlation_id,
        "traceparent": traceparent,
        "tracestate": tracestate,
    }
    response = call(wsgi.wrap(app), environ_for(headers=headers))
    assert len(calls) == 1 and response.status == "200 OK"
    for name, value in response.headers:
        assert "\r" not in value and "\n" not in value and "\r" not in name and "\n" not in name
    echoed = response.header("X-Request-ID")
    assert echoed in (request_id, correlation_id) or HEX32.fullmatch(echoed)
    assert SAFE.fullmatch(echoed)
    assert not trace.get_current_span().get_span_context().is_valid  # nothing left attached


def test_the_watchdog_thread_is_started_by_the_first_request(telemetry):
    assert not telemetry.runtime.watchdog.running
    call(wsgi.wrap(hello), environ_for())
    deadline = time.monotonic() + 5
    while not telemetry.runtime.watchdog.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert telemetry.runtime.watchdog.running
