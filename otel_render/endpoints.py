"""The four local endpoints, served by the WSGI layer ahead of the app:

- ``/health``: ``{"status": ...}``; 200 for ``healthy`` and ``degraded``, 503
  for ``unhealthy`` (the liveness rule in :mod:`otel_render.health`). For
  Render's load balancer, which polls it every few seconds: it reads the
  cached evaluation and nothing else.
- ``/api/health``: the seed's EnhancedHealthStatus for the instance. Without
  authorization it shows the statuses only; with the token, every check's
  observed value and output and the metrics (Spring Boot Actuator's
  ``when-authorized`` rule).
- ``/api/metrics``: requests per route, database, schedulers, recovery,
  processes and memory, the telemetry pipeline, and every merged metric by
  name; rendered from the same meters the OTLP export reads, merged over the
  instance's processes.
- ``/api/diagnostics``: recent error contexts, stalled requests and jobs with
  their stacks, recovery actions, scheduler states, health checks, the
  effective configuration (secrets masked), platform and resource, and
  dependency versions.

Access: ``/api/metrics`` and ``/api/diagnostics`` need
``Authorization: Bearer <OTEL_RENDER_TOKEN>`` (compared in constant time).
With no token configured they answer 404, unless
``OTEL_RENDER_PUBLIC_ENDPOINTS=true``, which shows everything to everyone. A
wrong token gets 401, is counted in ``otel_render.endpoint.auth_failures`` and
logged (at most once a minute, never with the token). Every answer is JSON
with ``Cache-Control: no-store``, and every body passes the scrubber before
it leaves the process.

Requests to these endpoints create no span; they are counted in
``otel_render.endpoint.requests``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from importlib import metadata
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from otel_render import health, lifecycle, recovery, runtime
from otel_render.config import Settings
from otel_render.diagnostics import utc_now_iso
from otel_render.local import summary
from otel_render.local.monitor import InstanceMonitor, current_process_info
from otel_render.local.snapshot import merge_instance
from otel_render.platform import cpu_limit, detect_platform
from otel_render.scrub import REDACTED
from otel_render.scrub import default as scrubber
from otel_render.version import __version__
from otel_render.web import local_routes

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

    from otel_render.distro import Pipeline

_logger = logging.getLogger("otel_render.endpoints")

HEALTH = "/health"
API_HEALTH = "/api/health"
API_METRICS = "/api/metrics"
API_DIAGNOSTICS = "/api/diagnostics"
ROUTES = (HEALTH, API_HEALTH, API_METRICS, API_DIAGNOSTICS)

FULL = "full"  # the token matched, or the endpoints are public
SUMMARY = "summary"  # no credentials: statuses only (404 for metrics and diagnostics)
DENIED = "denied"  # wrong credentials

MAX_AUTHORIZATION_CHARS = 4096
SCOPE = "otel_render.endpoints"

_STATUS_LINES = {
    200: "200 OK",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}
_COMMON_HEADERS = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


# --------------------------------------------------------------------------
# Access
# --------------------------------------------------------------------------


def access(authorization: str | None, token: str, public: bool) -> str:
    """Who is asking: :data:`FULL`, :data:`SUMMARY` or :data:`DENIED`.

    ``public`` lets everyone in. With no token configured everyone is
    anonymous (SUMMARY), whatever they send. Otherwise a request without an
    ``Authorization`` header is anonymous, and one that sends credentials
    must send the right ``Bearer`` token (else DENIED).
    """
    if public:
        return FULL
    if not token or not authorization or not authorization.strip():
        return SUMMARY
    if len(authorization) > MAX_AUTHORIZATION_CHARS:
        return DENIED
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return DENIED
    presented_bytes = presented.strip().encode("utf-8", "surrogateescape")
    return FULL if hmac.compare_digest(presented_bytes, token.encode("utf-8")) else DENIED


class AuthFailureLog:
    """Logs refused requests at most once per ``interval_s``, with a count,
    never with what was sent."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        self._last: float | None = None

    def record(self, route: str) -> bool:
        """Count one refusal; returns whether a line was logged."""
        now = self._clock()
        with self._lock:
            self._pending += 1
            if self._last is not None and now - self._last < self.interval_s:
                return False
            count, self._pending, self._last = self._pending, 0, now
        _logger.warning(
            "otel-render: refused %d request(s) without a valid OTEL_RENDER_TOKEN to the local endpoints "
            "(latest: %s); they are counted in otel_render.endpoint.auth_failures",
            count,
            route,
        )
        return True

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._last = None


class EndpointCounts:
    """Requests and refusals counted in plain integers, exported through
    observable counters: an SDK counter update per ``/health`` poll would
    cost more than answering it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._refusals: dict[str, int] = {}

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1

    def refusal(self, route: str) -> None:
        with self._lock:
            self._refusals[route] = self._refusals.get(route, 0) + 1

    def observe_requests(self, _options: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = list(self._requests.items())
        return [
            Observation(count, {"http.route": route, "http.response.status_code": status})
            for (route, status), count in counts
        ]

    def observe_refusals(self, _options: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = list(self._refusals.items())
        return [Observation(count, {"http.route": route}) for route, count in counts]

    def reset_after_fork(self) -> None:
        """A worker counts its own requests (the master reports its own)."""
        self._lock = threading.Lock()
        self._requests = {}
        self._refusals = {}


# --------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN); other values are kept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def encode(body: Mapping[str, Any], *, pretty: bool) -> bytes:
    text = json.dumps(json_safe(scrubber.mapping(body)), indent=2 if pretty else None, default=str, allow_nan=False)
    return text.encode("utf-8")


def mask_headers(value: str) -> str:
    """``OTEL_EXPORTER_OTLP_HEADERS``-style ``name=value,...`` with every value masked."""
    names = [item.partition("=")[0].strip() for item in value.split(",") if item.strip()]
    return ",".join(f"{name}={REDACTED}" for name in names)


def effective_configuration(settings: Settings, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """Every otel-render variable's effective value, the standard ``OTEL_*``
    variables that are set, and the export plan; secrets masked."""
    variables: list[dict[str, Any]] = []
    for variable_field in fields(Settings):
        variable = variable_field.metadata.get("variable")
        if variable is None:
            continue
        value = getattr(settings, variable_field.name)
        shown = ",".join(value) if isinstance(value, tuple) else value
        if variable.secret or scrubber.is_sensitive(variable.env):
            shown = REDACTED if value else ""
        raw = settings.environ.get(variable.env)
        variables.append(
            {
                "variable": variable.env,
                "value": shown,
                "source": "environment" if raw is not None and raw.strip() else "default",
            }
        )
    standard: dict[str, str] = {}
    for name, value in sorted(settings.environ.items()):
        if not name.startswith("OTEL_") or name.startswith("OTEL_RENDER_"):
            continue
        if name.endswith("_HEADERS"):
            standard[name] = mask_headers(value)
        elif scrubber.is_sensitive(name):
            standard[name] = REDACTED
        elif name.endswith("_ENDPOINT"):
            standard[name] = scrubber.url(value)
        else:
            standard[name] = scrubber.text(value)
    problems = [problem.message for problem in Settings.from_environ(settings.environ)[1]]
    result: dict[str, Any] = {"otelRender": variables, "standard": standard, "problems": problems}
    if pipeline is not None:
        result["export"] = {
            "backend": pipeline.plan.backend,
            "signals": {
                name: {
                    "exporters": list(plan.exporters),
                    "protocol": plan.protocol,
                    "endpoint": scrubber.url(plan.endpoint) if plan.endpoint else None,
                    "headers": sorted(plan.headers or {}),
                    "compression": plan.compression,
                    "timeoutSeconds": plan.timeout_s,
                }
                for name, plan in pipeline.plan.signals.items()
            },
            "problems": list(pipeline.problems),
        }
    return result


_KNOWN_DEPENDENCIES = (
    "otel-render",
    "flask",
    "werkzeug",
    "django",
    "sqlalchemy",
    "apscheduler",
    "gunicorn",
    "uvicorn",
    "psycopg2",
    "psycopg2-binary",
    "psycopg",
    "pymysql",
    "mysqlclient",
    "psutil",
    "wrapt",
    "protobuf",
    "requests",
)
_dependency_cache: dict[str, str] | None = None


def dependency_versions() -> dict[str, str]:
    """Python, otel-render, every ``opentelemetry-*`` distribution and the
    libraries it instruments, where installed (read once per process)."""
    global _dependency_cache
    if _dependency_cache is None:
        found = {"python": sys.version.split()[0]}
        names = set(_KNOWN_DEPENDENCIES)
        for distribution in metadata.distributions():
            name = (distribution.metadata.get("Name") or "").lower()
            if name.startswith("opentelemetry-"):
                names.add(name)
        for name in sorted(names):
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        _dependency_cache = found
    return dict(_dependency_cache)


# --------------------------------------------------------------------------
# The WSGI side
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: Mapping[str, Any] | bytes
    headers: tuple[tuple[str, str], ...] = ()
    pretty: bool = True


_NOT_FOUND = Answer(404, {"error": "not found"}, pretty=False)
_UNAUTHORIZED = Answer(
    401,
    {"error": "unauthorized", "message": "send Authorization: Bearer <OTEL_RENDER_TOKEN>"},
    (("WWW-Authenticate", 'Bearer realm="otel-render"'),),
    pretty=False,
)


class LocalEndpoints:
    """The four WSGI apps registered with :mod:`otel_render.web.local_routes`."""

    def __init__(
        self,
        settings: Settings,
        monitor: InstanceMonitor,
        meter: Meter | None = None,
        *,
        pipeline: Pipeline | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.pipeline = pipeline
        self._clock = clock
        self.auth_log = AuthFailureLog()
        self.counts = EndpointCounts()
        if meter is not None:
            meter.create_observable_counter(
                "otel_render.endpoint.requests",
                [self.counts.observe_requests],
                unit="{request}",
                description="Requests to /health and the /api/* endpoints.",
            )
            meter.create_observable_counter(
                "otel_render.endpoint.auth_failures",
                [self.counts.observe_refusals],
                unit="{request}",
                description="Requests with a missing or wrong OTEL_RENDER_TOKEN.",
            )
        self._health_bodies = {
            status: json.dumps({"status": status}).encode()
            for status in (health.HEALTHY, health.DEGRADED, health.UNHEALTHY)
        }
        self._apps = {
            HEALTH: self._wsgi(HEALTH, self._health),
            API_HEALTH: self._wsgi(API_HEALTH, self._api_health),
            API_METRICS: self._wsgi(API_METRICS, self._api_metrics),
            API_DIAGNOSTICS: self._wsgi(API_DIAGNOSTICS, self._api_diagnostics),
        }
        self._logged_errors: set[str] = set()

    def apps(self) -> dict[str, local_routes.WSGIApp]:
        return dict(self._apps)

    # -- plumbing ------------------------------------------------------------------

    def _wsgi(self, route: str, handler: Callable[[dict[str, Any], str], Answer]) -> local_routes.WSGIApp:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            method = environ.get("REQUEST_METHOD", "GET")
            if method not in ("GET", "HEAD"):
                answer = Answer(405, {"error": "method not allowed"}, (("Allow", "GET, HEAD"),), pretty=False)
            else:
                try:
                    answer = handler(environ, route)
                except Exception as exc:  # pylint: disable=broad-except
                    answer = self._failed(route, exc)
            body = answer.body if isinstance(answer.body, bytes) else encode(answer.body, pretty=answer.pretty)
            headers = [*_COMMON_HEADERS, *answer.headers, ("Content-Length", str(len(body)))]
            start_response(_STATUS_LINES.get(answer.status, f"{answer.status} Error"), headers)
            self.counts.request(route, answer.status)
            return [] if method == "HEAD" else [body]

        app.__name__ = f"otel_render_endpoint_{route.strip('/').replace('/', '_')}"
        return app

    def _failed(self, route: str, exc: Exception) -> Answer:
        key = f"{route}:{type(exc).__name__}"
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            _logger.warning("otel-render: the %s endpoint failed", route, exc_info=True)
        if route == HEALTH:
            # The load balancer must not pull the instance because we failed.
            return Answer(200, self._health_bodies[health.HEALTHY])
        return Answer(500, {"error": "otel-render could not build this answer; see the logs"}, pretty=False)

    def _refuse(self, route: str) -> Answer:
        self.counts.refusal(route)
        self.auth_log.record(route)
        return _UNAUTHORIZED

    def _access(self, environ: Mapping[str, Any]) -> str:
        return access(environ.get("HTTP_AUTHORIZATION"), self.settings.token, self.settings.public_endpoints)

    def _protected(self, environ: Mapping[str, Any], route: str) -> Answer | None:
        """None when the request may see ``route``; else the refusal."""
        granted = self._access(environ)
        if granted == FULL:
            return None
        if granted == SUMMARY and not self.settings.token:
            return _NOT_FOUND
        return self._refuse(route)

    # -- the endpoints -------------------------------------------------------------------

    def current_status(self) -> health.EnhancedHealthStatus:
        status = self.monitor.status()
        if status is not None:
            return status
        now = self._clock()
        pending = {
            name: health.HealthCheckResult(health.HEALTHY, time=utc_now_iso(now), output="not evaluated yet")
            for name in health.COMPONENTS
        }
        empty = merge_instance([])
        return health.build_status(
            checks=pending,
            liveness=self.monitor.liveness,
            now=now,
            started=now,
            platform=self.monitor.platform,
            metrics=summary.health_metrics(empty, None),
        )

    def _health(self, _environ: Mapping[str, Any], _route: str) -> Answer:
        status = self.monitor.status()
        value = status.status if status is not None else health.HEALTHY
        return Answer(503 if value == health.UNHEALTHY else 200, self._health_bodies[value])

    def _api_health(self, environ: Mapping[str, Any], route: str) -> Answer:
        granted = self._access(environ)
        if granted == DENIED:
            return self._refuse(route)
        status = self.current_status()
        body = status.to_dict(details=granted == FULL)
        return Answer(503 if status.status == health.UNHEALTHY else 200, body)

    def _api_metrics(self, environ: Mapping[str, Any], route: str) -> Answer:
        refused = self._protected(environ, route)
        if refused is not None:
            return refused
        return Answer(200, self.metrics_body())

    def _api_diagnostics(self, environ: Mapping[str, Any], route: str) -> Answer:
        refused = self._protected(environ, route)
        if refused is not None:
            return refused
        return Answer(200, self.diagnostics_body())

    # -- bodies --------------------------------------------------------------------------

    def metrics_body(self) -> dict[str, Any]:
        view = self.monitor.fresh_view()
        window = self.monitor.window()
        return {
            "timestamp": utc_now_iso(self._clock()),
            "collectedAt": utc_now_iso(view.collected_at) if view.collected_at else None,
            "instance": {
                "platform": self.monitor.platform,
                "processes": len(view.processes),
                "exitedProcesses": view.retired_processes,
            },
            "requests": {**summary.request_metrics(view, window), "routes": summary.routes(view, window)},
            "database": summary.database(view),
            "schedulers": summary.schedulers(view),
            "recovery": summary.recovery(view),
            "memory": summary.memory_usage(view),
            "processes": summary.processes(view),
            "telemetry": summary.pipeline(view),
            "endpoints": summary.endpoints(view),
            "metrics": summary.all_metrics(view),
        }

    def diagnostics_body(self) -> dict[str, Any]:
        view = self.monitor.fresh_view()
        rings = self.monitor.instance_diagnostics()
        status = self.current_status()
        limit = runtime.current().limit() if runtime.current() is not None else None
        cpus = cpu_limit(self.settings.environ)
        resource = dict(self.pipeline.resource.attributes) if self.pipeline is not None else {}
        return {
            "timestamp": utc_now_iso(self._clock()),
            "errors": rings.get("errors", []),
            "stalls": rings.get("stalls", []),
            "actions": rings.get("actions", []),
            "recovery": recovery.summary(recovery.current()),
            "schedulers": {
                **summary.schedulers(view),
                "check": status.checks.get("schedulers", health.not_checked("schedulers", self._clock())).to_dict(),
            },
            "health": {
                "status": status.status,
                "checks": {name: result.to_dict() for name, result in status.checks.items()},
            },
            "configuration": effective_configuration(self.settings, self.pipeline),
            "platform": {
                "platform": detect_platform(self.settings.environ),
                "resource": {
                    key: value if isinstance(value, (str, int, float, bool)) else list(value)
                    for key, value in resource.items()
                },
                "memoryLimit": {"bytes": limit.bytes, "source": limit.source} if limit is not None else None,
                "cpuLimit": {"cpus": cpus.cpus, "source": cpus.source},
                "servedBy": self.monitor.process().label,
                "processes": summary.processes(view),
            },
            "dependencies": dependency_versions(),
        }

    def reset_after_fork(self) -> None:
        self.auth_log.reset_after_fork()
        self.counts.reset_after_fork()


# --------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------

_installed: LocalEndpoints | None = None


def installed() -> LocalEndpoints | None:
    return _installed


def install(pipeline: Pipeline) -> LocalEndpoints | None:
    """Runtime meters, the instance monitor and its loop, and the four
    endpoints; called once by the configurator. Never raises."""
    global _installed
    if _installed is not None:
        return _installed
    try:
        settings = pipeline.settings
        local_routes.set_prefix(settings.endpoint_prefix)
        if pipeline.meter_provider is None or pipeline.local_reader is None:
            _logger.info("otel-render: no SDK meter provider of ours; the local endpoints are off")
            return None
        runtime.install(pipeline.meter_provider, settings)

        def instance_id() -> str | None:
            value = pipeline.resource.attributes.get("service.instance.id")
            return str(value) if value is not None else None

        monitor = InstanceMonitor(
            pipeline.local_reader, settings, process_info=lambda: current_process_info(instance_id)
        )
        monitor.register_builtin_checks()
        endpoints = LocalEndpoints(
            settings, monitor, pipeline.meter_provider.get_meter(SCOPE, __version__), pipeline=pipeline
        )
        for path, app in endpoints.apps().items():
            local_routes.register(path, app)
        lifecycle.on_fork_child(runtime.reset_after_fork)
        lifecycle.on_fork_child(health.reset_after_fork)
        lifecycle.on_fork_child(monitor.reset_after_fork)
        lifecycle.on_fork_child(endpoints.reset_after_fork)
        lifecycle.before_flush(monitor.on_exit)
        lifecycle.add_loop(lifecycle.BackgroundLoop("instance-monitor", settings.health_interval_s, monitor.tick))
        _installed = endpoints
        return endpoints
    except Exception:  # pylint: disable=broad-except
        _logger.warning("otel-render: could not set up the local endpoints; the app runs without them", exc_info=True)
        return None
