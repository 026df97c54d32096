"""The four endpoints as WSGI apps, in process, over a real meter provider and
a real instance directory: access rules, status codes, headers, schemas,
masked configuration, and secrets that must never come out."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from support.endpoint_schemas import validate

from otel_render import diagnostics
from otel_render.config import Settings
from otel_render.endpoints import (
    API_DIAGNOSTICS,
    API_HEALTH,
    API_METRICS,
    DENIED,
    FULL,
    HEALTH,
    SUMMARY,
    AuthFailureLog,
    LocalEndpoints,
    access,
    effective_configuration,
    mask_headers,
)
from otel_render.health import DEGRADED, HEALTHY, UNHEALTHY, HealthCheckResult
from otel_render.local.monitor import InstanceMonitor, current_process_info
from otel_render.local.reader import LocalMetricReader
from otel_render.local.store import InstanceStore

TOKEN = "t0k3n-9f86d081884c7d659a2feaa0c55ad015"


# --- access ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "token", "public", "expected"),
    [
        (None, TOKEN, False, SUMMARY),
        ("", TOKEN, False, SUMMARY),
        (f"Bearer {TOKEN}", TOKEN, False, FULL),
        (f"bearer   {TOKEN}", TOKEN, False, FULL),
        (f"Bearer {TOKEN}x", TOKEN, False, DENIED),
        (f"Basic {TOKEN}", TOKEN, False, DENIED),
        ("Bearer", TOKEN, False, DENIED),
        ("Bearer " + "x" * 5000, TOKEN, False, DENIED),
        ("Bearer caf\udce9", TOKEN, False, DENIED),
        (f"Bearer {TOKEN}", "", False, SUMMARY),
        (None, "", True, FULL),
        ("Bearer wrong", TOKEN, True, FULL),
    ],
)
def test_who_gets_what(authorization, token, public, expected):
    assert access(authorization, token, public) == expected


def test_refusals_are_logged_at_most_once_a_minute_without_the_token(caplog):
    now = [0.0]
    log = AuthFailureLog(interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="otel_render.endpoints"):
        assert log.record(API_METRICS) is True
        now[0] = 30.0
        assert log.record(API_METRICS) is False
        assert log.record(API_DIAGNOSTICS) is False
        now[0] = 61.0
        assert log.record(API_METRICS) is True
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and "refused 3 request(s)" in lines[1]


# --- a real monitor behind the endpoints -----------------------------------------------


class Instance:
    """An in-process endpoint set over a real SDK and a real instance directory."""

    def __init__(self, tmp_path, environ, checks=None):
        self.settings, _ = Settings.from_environ(environ)
        self.reader = LocalMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.checks = dict(checks or {})
        store = InstanceStore(tmp_path / "base" / "instance-test")
        self.monitor = InstanceMonitor(
            self.reader,
            self.settings,
            process_info=lambda: current_process_info(lambda: "srv-test-w0"),
            store_factory=lambda settings: (store, False),
            checks=lambda: self.checks,
        )
        self.checks.setdefault("memory", self.monitor.memory_check)
        self.checks.setdefault("performance", self.monitor.performance_check)
        self.endpoints = LocalEndpoints(self.settings, self.monitor, self.provider.get_meter("otel_render.endpoints"))
        self.meter = self.provider.get_meter("app")

    def get(self, path, method="GET", authorization=None, **environ):
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, **environ}
        if authorization is not None:
            environ["HTTP_AUTHORIZATION"] = authorization
        captured = {}

        def start_response(status, headers):
            captured["status"], captured["headers"] = int(status.split()[0]), dict(headers)

        body = b"".join(self.endpoints.apps()[path](environ, start_response))
        return captured["status"], captured["headers"], body

    def json(self, path, authorization=None):
        status, _, body = self.get(path, authorization=authorization)
        return status, json.loads(body)

    def close(self):
        self.provider.shutdown()


@pytest.fixture
def make_instance(tmp_path):
    made = []

    def make(environ=None, checks=None):
        instance = Instance(tmp_path, {"OTEL_RENDER_TOKEN": TOKEN, **(environ or {})}, checks)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance.close()


def test_every_answer_is_uncached_json_and_head_has_no_body(make_instance):
    instance = make_instance()
    instance.monitor.tick()
    for path in (HEALTH, API_HEALTH, API_METRICS, API_DIAGNOSTICS):
        status, headers, body = instance.get(path, authorization=f"Bearer {TOKEN}")
        assert status == 200, path
        assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
        assert int(headers["Content-Length"]) == len(body)
        validate(path, json.loads(body))
        status, headers, body = instance.get(path, method="HEAD", authorization=f"Bearer {TOKEN}")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, headers, _ = instance.get(HEALTH, method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_health_is_200_for_degraded_and_503_only_for_a_liveness_failure(make_instance):
    checks = {"database": lambda now: HealthCheckResult(UNHEALTHY, output="connection refused")}
    instance = make_instance(checks=checks)
    instance.monitor.tick()
    assert instance.json(HEALTH) == (200, {"status": DEGRADED})
    status, body = instance.json(API_HEALTH, authorization=f"Bearer {TOKEN}")
    assert status == 200 and body["checks"]["database"]["output"] == "connection refused"

    instance.checks["schedulers"] = lambda now: HealthCheckResult(UNHEALTHY, output="failed beyond restart")
    instance.monitor.tick()
    assert instance.json(HEALTH) == (503, {"status": UNHEALTHY})
    assert instance.json(API_HEALTH)[0] == 503


def test_health_before_the_first_evaluation_says_healthy(make_instance):
    instance = make_instance()
    assert instance.json(HEALTH) == (200, {"status": HEALTHY})
    status, body = instance.json(API_HEALTH, authorization=f"Bearer {TOKEN}")
    validate(API_HEALTH, body)
    assert body["checks"]["memory"]["output"] == "not evaluated yet"


def test_api_health_shows_statuses_only_without_the_token(make_instance):
    instance = make_instance(
        checks={"database": lambda now: HealthCheckResult(UNHEALTHY, output="host=db password=pw")}
    )
    instance.monitor.tick()
    status, body = instance.json(API_HEALTH)
    assert status == 200
    validate(API_HEALTH, body)
    assert set(body) == {"status", "timestamp", "checks"}
    assert body["checks"]["database"] == {"status": UNHEALTHY}
    assert instance.json(API_HEALTH, authorization="Bearer nope")[0] == 401
    status, body = instance.json(API_HEALTH, authorization=f"Bearer {TOKEN}")
    assert "metrics" in body and "pw" not in json.dumps(body)


def test_metrics_and_diagnostics_need_the_token_and_count_refusals(make_instance):
    instance = make_instance()
    for path in (API_METRICS, API_DIAGNOSTICS):
        status, headers, body = instance.get(path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert instance.get(path, authorization="Bearer wrong")[0] == 401
        assert instance.get(path, authorization=f"Bearer {TOKEN}")[0] == 200
    _, body = instance.json(API_METRICS, authorization=f"Bearer {TOKEN}")
    assert body["endpoints"]["authFailures"] == {API_METRICS: 2, API_DIAGNOSTICS: 2}
    assert body["endpoints"]["requests"][API_METRICS] == {"401": 2, "200": 1}


def test_without_a_token_metrics_and_diagnostics_do_not_exist_unless_public(make_instance):
    hidden = make_instance({"OTEL_RENDER_TOKEN": ""})
    for path in (API_METRICS, API_DIAGNOSTICS):
        assert hidden.get(path)[0] == 404
        assert hidden.get(path, authorization="Bearer anything")[0] == 404
    assert hidden.json(API_HEALTH)[0] == 200
    public = make_instance({"OTEL_RENDER_TOKEN": "", "OTEL_RENDER_PUBLIC_ENDPOINTS": "true"})
    public.monitor.tick()
    assert public.get(API_METRICS)[0] == 200
    assert "metrics" in public.json(API_HEALTH)[1]


def test_api_metrics_renders_what_the_meters_hold(make_instance):
    instance = make_instance()
    histogram = instance.meter.create_histogram(
        "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=[0.01, 0.1, 1.0]
    )
    for status in [200] * 9 + [503]:
        histogram.record(
            0.05, {"http.request.method": "GET", "http.route": "/items/<id>", "http.response.status_code": status}
        )
    instance.meter.create_counter("app.requests").add(10)
    status, body = instance.json(API_METRICS, authorization=f"Bearer {TOKEN}")
    validate(API_METRICS, body)
    assert body["requests"]["total"] == 10 and body["requests"]["errors"] == 1
    assert body["requests"]["routes"][0]["route"] == "/items/<id>"
    (app_requests,) = [entry for entry in body["metrics"] if entry["name"] == "app.requests"]
    assert app_requests["points"] == [{"attributes": {}, "value": 10}]
    assert body["instance"]["processes"] == 1


def test_a_failing_endpoint_answers_500_and_health_never_fails(make_instance, monkeypatch):
    instance = make_instance()

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(instance.monitor, "fresh_view", broken)
    monkeypatch.setattr(instance.monitor, "status", broken)
    assert instance.get(API_METRICS, authorization=f"Bearer {TOKEN}")[0] == 500
    assert instance.json(HEALTH) == (200, {"status": HEALTHY})


# --- secrets ---------------------------------------------------------------------------


SECRETS = {
    "OTEL_RENDER_TOKEN": TOKEN,
    "OTEL_RENDER_GRAFANA_TOKEN": "glc_planted-grafana-token",
    "HONEYCOMB_API_KEY": "hcaik_planted-honeycomb-key",
    "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=planted-team-key,authorization=Basic cGxhbnRlZA==",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:planted-url-password@collector.example:4318",
}


def test_the_effective_configuration_masks_every_secret():
    settings, _ = Settings.from_environ({**SECRETS, "OTEL_RENDER_MEMORY_LIMIT_MB": "512"})
    configuration = effective_configuration(settings)
    text = json.dumps(configuration)
    for planted in ("planted", TOKEN, "cGxhbnRlZA"):
        assert planted not in text
    by_name = {entry["variable"]: entry for entry in configuration["otelRender"]}
    assert by_name["OTEL_RENDER_TOKEN"]["value"] == "[redacted]"
    assert by_name["OTEL_RENDER_MEMORY_LIMIT_MB"] == {
        "variable": "OTEL_RENDER_MEMORY_LIMIT_MB",
        "value": 512,
        "source": "environment",
    }
    assert (
        configuration["standard"]["OTEL_EXPORTER_OTLP_HEADERS"]
        == "x-honeycomb-team=[redacted],authorization=[redacted]"
    )
    assert mask_headers("a=1, b = 2") == "a=[redacted],b=[redacted]"


def test_secrets_in_error_contexts_and_checks_never_leave_through_any_endpoint(make_instance):
    instance = make_instance(
        {**SECRETS, "OTEL_RENDER_PUBLIC_ENDPOINTS": "false"},
        checks={
            "database": lambda now: HealthCheckResult(UNHEALTHY, output="postgresql://app:planted-db-pw@db/shop down")
        },
    )
    diagnostics.errors.clear()
    try:
        try:
            raise ValueError("login failed for token=planted-message-token")
        except ValueError as exc:
            diagnostics.capture_error_context(
                exc,
                correlation_id="abc",
                trace_id=None,
                request=diagnostics.RequestInfo(
                    method="GET",
                    path="/login",
                    route="/login",
                    # A careless caller that did not scrub: the endpoint must still mask them.
                    headers={"authorization": "Bearer planted-header-token", "cookie": "session=planted-cookie"},
                    ip=None,
                    userAgent="curl",
                ),
            )
        instance.monitor.tick()
        bodies = [
            instance.get(path, authorization=f"Bearer {TOKEN}")[2].decode()
            for path in (HEALTH, API_HEALTH, API_METRICS, API_DIAGNOSTICS)
        ]
    finally:
        diagnostics.errors.clear()
    everything = "\n".join(bodies)
    assert "login failed" in everything  # the error context is there...
    for planted in ("planted", TOKEN, "cGxhbnRlZA"):
        assert planted not in everything  # ...without any secret
    validate(API_DIAGNOSTICS, json.loads(bodies[3]))
