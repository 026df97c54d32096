"""The Django hooks, in process, on the one-file project in tests/apps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.wsgi_calls import call, environ_for

from otel_render import diagnostics
from otel_render.web import local_routes
from otel_render.web.django import DjangoInstrumentor, route_template

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "apps"))


@pytest.fixture
def django_app(telemetry):
    DjangoInstrumentor().instrument()
    import django_app as module

    yield module.application
    DjangoInstrumentor().uninstrument()


def test_django_requests_get_route_templates(django_app, telemetry):
    response = call(django_app, environ_for("/items/5"))
    assert response.status.startswith("200") and response.header("traceresponse")
    (span,) = telemetry.server_spans()
    assert span.name == "GET /items/<int:item_id>"
    (point,) = telemetry.points("http.server.request.duration")
    assert point.attributes["http.route"] == "/items/<int:item_id>"


def test_an_unhandled_exception_is_captured_and_django_answers_500(django_app, telemetry):
    response = call(django_app, environ_for("/fail"))
    assert response.status.startswith("500")
    (context,) = diagnostics.errors.snapshot()
    assert context.request.route == "/fail"
    assert "hunter2" not in context.error.message
    assert telemetry.server_spans()[0].attributes["error.type"] == "RuntimeError"


def test_a_404_is_no_error(django_app, telemetry):
    assert call(django_app, environ_for("/nowhere")).status.startswith("404")
    assert diagnostics.errors.snapshot() == []
    assert "http.route" not in telemetry.server_spans()[0].attributes


def test_the_projects_own_health_route_wins(django_app):
    def ours(environ, start_response):
        start_response("200 OK", [])
        return [b"otel-render"]

    local_routes.register("/health", ours)
    local_routes.register("/api/health", ours)
    assert call(django_app, environ_for("/health")).body == b'{"mine": true}'
    assert call(django_app, environ_for("/_otel/health")).body == b"otel-render"
    assert call(django_app, environ_for("/api/health")).body == b"otel-render"


def test_uninstrument_restores_django(django_app, telemetry):
    from django.core.handlers.wsgi import WSGIHandler

    DjangoInstrumentor().uninstrument()
    assert not hasattr(WSGIHandler.__call__, "__wrapped__")
    call(django_app, environ_for("/items/1"))
    assert telemetry.server_spans() == []
    DjangoInstrumentor().instrument()
    call(django_app, environ_for("/items/1"))
    assert len(telemetry.server_spans()) == 1


def test_route_templates_get_a_leading_slash():
    assert route_template("items/<int:pk>") == "/items/<int:pk>"
    assert route_template("^legacy/(?P<pk>[0-9]+)/$") == "^legacy/(?P<pk>[0-9]+)/$"
    assert route_template("") is None
