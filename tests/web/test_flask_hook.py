"""The Flask hooks, in process: route templates, errors, the app's own routes."""

from __future__ import annotations

import flask
import pytest
from support.wsgi_calls import call, environ_for

from otel_render import diagnostics
from otel_render.web import local_routes, wsgi
from otel_render.web.flask import FlaskInstrumentor

ORIGINAL_WSGI_APP = flask.Flask.wsgi_app
ORIGINAL_HANDLE_EXCEPTION = flask.Flask.handle_exception


@pytest.fixture
def instrumented(telemetry):
    FlaskInstrumentor().instrument()
    yield telemetry
    FlaskInstrumentor().uninstrument()


def make_app() -> flask.Flask:
    app = flask.Flask("t")

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return {"id": item_id}

    @app.get("/fail")
    def fail():
        raise RuntimeError("view failed: token=abc123")

    @app.get("/health")
    def own_health():
        return {"mine": True}

    return app


def test_flask_requests_get_route_templates(instrumented):
    app = make_app()
    response = call(app, environ_for("/items/3", headers={"X-Request-ID": "r-1"}))
    assert response.status == "200 OK" and response.header("X-Request-ID") == "r-1"
    (span,) = instrumented.server_spans()
    assert span.name == "GET /items/<int:item_id>"
    assert span.attributes["http.route"] == "/items/<int:item_id>"
    (point,) = instrumented.points("http.server.request.duration")
    assert point.attributes["http.route"] == "/items/<int:item_id>"


def test_apps_created_before_instrumentation_are_covered(telemetry):
    app = make_app()
    FlaskInstrumentor().instrument()
    try:
        call(app, environ_for("/items/1"))
    finally:
        FlaskInstrumentor().uninstrument()
    assert telemetry.server_spans()[0].attributes["http.route"] == "/items/<int:item_id>"


def test_an_unhandled_exception_is_captured_and_flask_still_answers_500(instrumented):
    response = call(make_app(), environ_for("/fail"))
    assert response.status.startswith("500") and response.header("X-Request-ID")
    (context,) = diagnostics.errors.snapshot()
    assert context.request.route == "/fail"
    assert "abc123" not in context.error.message
    (span,) = instrumented.server_spans()
    assert span.status.status_code.name == "ERROR" and span.attributes["error.type"] == "RuntimeError"


def test_a_404_is_no_error_and_has_no_route(instrumented):
    response = call(make_app(), environ_for("/nowhere"))
    assert response.status.startswith("404")
    (span,) = instrumented.server_spans()
    assert span.name == "GET" and "http.route" not in span.attributes
    assert diagnostics.errors.snapshot() == []


def test_under_an_outer_middleware_there_is_still_one_span(instrumented):
    call(wsgi.wrap(make_app()), environ_for("/items/2"))
    (span,) = instrumented.spans.get_finished_spans()
    assert span.attributes["http.route"] == "/items/<int:item_id>"


def test_the_apps_own_health_route_wins(instrumented):
    def ours(environ, start_response):
        start_response("200 OK", [])
        return [b"otel-render"]

    local_routes.register("/health", ours)
    local_routes.register("/api/health", ours)
    app = make_app()
    assert call(app, environ_for("/health")).body == b'{"mine":true}\n'
    assert call(app, environ_for("/_otel/health")).body == b"otel-render"
    assert call(app, environ_for("/api/health")).body == b"otel-render"


def test_uninstrument_restores_flask():
    FlaskInstrumentor().instrument()
    assert flask.Flask.wsgi_app is not ORIGINAL_WSGI_APP
    FlaskInstrumentor().uninstrument()
    assert flask.Flask.wsgi_app is ORIGINAL_WSGI_APP
    assert flask.Flask.handle_exception is ORIGINAL_HANDLE_EXCEPTION
