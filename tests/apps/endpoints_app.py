"""A plain WSGI app for the local endpoints' integration tests, run under
``opentelemetry-instrument gunicorn`` like a user's app.

The first lines of ``app`` stand in for otel-render's WSGI middleware: like
the middleware, they hand the local endpoints' paths to otel-render before
the app sees the request. The app counts its own requests in
``app.requests`` (the tests compare that total across ``/api/metrics`` and
the OTLP receiver) and, also standing in for the middleware, makes a span
per request with a scrubbed query string and captures an error context for
``/fail``.

``app.boots`` is incremented once at import: with ``--preload`` that happens
in the master only, so the instance total must stay 1 however many workers
inherit the master's points.

With ``APP_DATABASE_DSN`` set, a ``database`` health check connects to that
PostgreSQL server (a stand-in for the database integration's check). Its
output names the DSN on failure on purpose: the health model must scrub it.

Routes: ``/`` (200), ``/fail`` (500 with an error context), ``/slow?ms=N``.
"""

import logging
import os
import time
from urllib.parse import parse_qs

from opentelemetry import metrics, trace

from otel_render import diagnostics, health
from otel_render.scrub import default as scrubber
from otel_render.web import local_routes

log = logging.getLogger("endpoints-app")
tracer = trace.get_tracer("endpoints-app")
meter = metrics.get_meter("endpoints-app")
requests_counter = meter.create_counter("app.requests", unit="{request}")
meter.create_counter("app.boots", unit="{boot}").add(1)

DSN = os.environ.get("APP_DATABASE_DSN")


def database_check(now):
    import psycopg2  # pylint: disable=import-outside-toplevel

    started = time.monotonic()
    try:
        connection = psycopg2.connect(DSN, connect_timeout=2)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connection.close()
    except psycopg2.Error as exc:
        return health.HealthCheckResult(health.UNHEALTHY, output=f"cannot query {DSN}: {exc}")
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return health.HealthCheckResult(health.HEALTHY, elapsed_ms, "ms", output="SELECT 1 answered")


if DSN:
    health.register_check("database", database_check)


def app(environ, start_response):
    # Standing in for otel-render's WSGI middleware (see the module docstring).
    local = local_routes.match(environ.get("PATH_INFO", ""))
    if local is not None:
        return local(environ, start_response)

    path = environ.get("PATH_INFO", "/")
    query = environ.get("QUERY_STRING", "")
    route = path if path in ("/", "/fail", "/slow") else "/other"
    with tracer.start_as_current_span(f"GET {route}", kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("url.path", path)
        span.set_attribute("url.query", scrubber.query_string(query))
        requests_counter.add(1, {"route": route})
        if path == "/fail":
            try:
                raise RuntimeError("the endpoints test app failed on purpose")
            except RuntimeError as exc:
                headers = {
                    key[5:].replace("_", "-").lower(): value
                    for key, value in environ.items()
                    if key.startswith("HTTP_")
                }
                diagnostics.capture_error_context(
                    exc,
                    correlation_id=None,
                    trace_id=format(span.get_span_context().trace_id, "032x"),
                    request=diagnostics.RequestInfo(
                        method=environ.get("REQUEST_METHOD", "GET"),
                        path=path,
                        route=route,
                        headers=scrubber.headers(headers),
                        ip=None,
                        userAgent=headers.get("user-agent"),
                    ),
                )
                log.error("request failed: %s?%s", path, scrubber.query_string(query))
            body = b'{"error": "failed"}'
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [body]
        if path == "/slow":
            milliseconds = int(parse_qs(query).get("ms", ["100"])[0])
            time.sleep(milliseconds / 1000)
    body = f'{{"pid": {os.getpid()}}}'.encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
