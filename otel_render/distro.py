"""The entry points ``opentelemetry-instrument`` loads: our Distro and
Configurator, and the SDK pipeline they build.

The pipeline, like the SDK's own configurator but with Render's defaults:

- a resource from Render's variables (standard ``OTEL_*`` variables win) and a
  ``service.instance.id`` per gunicorn worker slot (see ``web/gunicorn.py``);
- exporters from :mod:`otel_render.backends` (OTLP/HTTP by default, presets for
  Grafana Cloud and Honeycomb, nothing over the network when no backend is set);
- a :class:`~otel_render.local.reader.LocalMetricReader` always beside the OTLP
  reader, so the local endpoints read the numbers the backend gets (reading
  the OTLP reader's own aggregations when they are the same kind, so that
  each measurement is aggregated once);
- providers that do not register their own unbounded ``atexit`` shutdown: the
  package flushes them all under one deadline (:mod:`otel_render.lifecycle`).

``configure()`` is idempotent and never raises into the host app: a failure is
logged once and the app runs uninstrumented.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _BaseConfigurator
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.util._importlib_metadata import EntryPoint, entry_points

from otel_render import diagnostics, endpoints, lifecycle, recovery, scrub, scrub_export
from otel_render.backends import PROTOCOL_GRPC, ExportPlan, SignalPlan, plan_export
from otel_render.config import Settings, get_settings, sdk_self_metrics
from otel_render.correlation import CorrelationIdGenerator, sampler_for
from otel_render.local.reader import LocalMetricReader, can_read_through
from otel_render.platform import render_resource_attributes, user_resource_keys, without_user_keys
from otel_render.version import __version__
from otel_render.web import gunicorn

_logger = logging.getLogger("otel_render")

DISTRO_NAME = "otel_render"
CONFIGURATOR_NAME = "otel_render"

#: Contrib instrumentations that ours replace: loading both would make two
#: server spans per request or two spans per query. Later integrations add to it.
SUPERSEDED_CONTRIB_INSTRUMENTORS: set[str] = {
    "sqlalchemy",  # otel_render.db: also SQLAlchemy 2.1, pool meters, deadlines, circuit breaker
    # The gunicorn, Flask and Django hooks of web/ make the server span, and
    # logs.py puts the ids on log records (docs/configuration.md, "Web requests",
    # explains what happens when opentelemetry-distro loads both).
    "flask",
    "django",
    "logging",
}


@dataclass
class Pipeline:
    """What :func:`configure_sdk` built; other modules read it via :func:`current_pipeline`."""

    settings: Settings
    plan: ExportPlan
    resource: Resource
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    local_reader: LocalMetricReader | None = None
    owns_sdk: bool = True
    problems: list[str] = field(default_factory=list)


_lock = threading.RLock()
_pipeline: Pipeline | None = None


def current_pipeline() -> Pipeline | None:
    """The pipeline this process configured, or None (not configured, or disabled)."""
    return _pipeline


def configure_sdk(auto_instrumentation_version: str | None = None) -> Pipeline | None:
    """Build and install the SDK pipeline once per process tree; never raises."""
    global _pipeline
    with _lock:
        if _pipeline is not None:
            return _pipeline
        settings = get_settings()
        if settings.sdk_disabled():
            _logger.debug("otel-render: OTEL_SDK_DISABLED=true, nothing configured")
            return None
        try:
            # The SDK's otel.sdk.* pipeline metrics, for the processors, exporters
            # and readers built here only: tracers made later (every
            # instrumentation's, ours included) would count every span.
            with sdk_self_metrics(settings):
                pipeline = _build(settings, auto_instrumentation_version)
            _start(pipeline)
            _pipeline = pipeline
        except Exception:  # pylint: disable=broad-except
            _logger.exception("otel-render: could not configure OpenTelemetry; the app runs without it")
            return None
        return _pipeline


def _build(settings: Settings, auto_instrumentation_version: str | None) -> Pipeline:
    plan = plan_export(settings)
    for problem in plan.problems:
        _logger.warning("otel-render: %s", problem)
    resource = build_resource(settings, auto_instrumentation_version)
    if settings.scrub_keys:
        scrub.default.extend(settings.scrub_keys)
        scrub_export.forget_treatments()
    limits = cardinality_limits(settings)
    pipeline = Pipeline(settings=settings, plan=plan, resource=resource, problems=list(plan.problems))

    existing = trace.get_tracer_provider()
    if isinstance(existing, TracerProvider):
        # Someone configured the SDK before us (manual setup, or another
        # configurator won the entry point race). Keep theirs; add what we can.
        pipeline.owns_sdk = False
        _logger.warning(
            "otel-render: an OpenTelemetry SDK was already configured by %s; keeping it. Set "
            "OTEL_PYTHON_CONFIGURATOR=otel_render to let otel-render configure it",
            type(existing).__module__,
        )
        pipeline.tracer_provider = existing
        meter_provider = metrics.get_meter_provider()
        if isinstance(meter_provider, MeterProvider):
            pipeline.local_reader = LocalMetricReader(cardinality_limits=limits)
            meter_provider.add_metric_reader(pipeline.local_reader)
            pipeline.meter_provider = meter_provider
    else:
        local_reader = pipeline.local_reader = LocalMetricReader(cardinality_limits=limits)
        export_readers: list[MetricReader] = [
            ForkSafePeriodicExportingMetricReader(exporter, cardinality_limits=limits)
            for exporter in _exporters(plan.signals["metrics"])
        ]
        # Each registered reader aggregates every measurement once more: when
        # an export reader keeps the same points as the local one, the local
        # reader reads its aggregations instead of registering its own.
        shared = next((reader for reader in export_readers if can_read_through(local_reader, reader)), None)
        readers = export_readers if shared is not None else [local_reader, *export_readers]
        pipeline.meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
        if shared is not None:
            local_reader.read_through(shared)
        metrics.set_meter_provider(pipeline.meter_provider)

        pipeline.tracer_provider = TracerProvider(
            resource=resource,
            shutdown_on_exit=False,
            # Request ids become trace ids through the SDK's own seams.
            id_generator=CorrelationIdGenerator(),
            sampler=sampler_for(settings),
        )
        for processor in _span_processors(plan.signals["traces"]):
            pipeline.tracer_provider.add_span_processor(processor)
        trace.set_tracer_provider(pipeline.tracer_provider)

        log_exporters = _exporters(plan.signals["logs"])
        if log_exporters:
            pipeline.logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            for exporter in log_exporters:
                pipeline.logger_provider.add_log_record_processor(
                    BatchLogRecordProcessor(scrub_export.ScrubbingLogExporter(exporter))
                )
            set_logger_provider(pipeline.logger_provider)

        for provider in (pipeline.tracer_provider, pipeline.meter_provider, pipeline.logger_provider):
            if provider is not None:
                lifecycle.add_provider(provider)
    return pipeline


def _start(pipeline: Pipeline) -> None:
    """Everything that runs on top of the providers: per-process state across
    fork, the local endpoints, recovery, the gunicorn and exit hooks."""
    settings, plan = pipeline.settings, pipeline.plan
    if pipeline.local_reader is not None:
        lifecycle.on_fork_child(pipeline.local_reader.reset_after_fork)
    lifecycle.on_fork_child(diagnostics.reset_after_fork)
    # Registered after the providers, so in a forked child this runs after the
    # SDK has refreshed its process-dependent resource (fork handlers run in
    # registration order) and our slot-based instance id is the one that stays.
    lifecycle.on_fork_child(lambda: apply_process_identity(pipeline))
    gunicorn.on_master_start(lambda: apply_process_identity(pipeline))
    endpoints.install(pipeline)  # runtime meters, instance monitor, /health and /api/*
    recovery.install(pipeline)  # rules over the meters that act on memory, database and scheduler trouble
    gunicorn.install()
    lifecycle.install(settings.shutdown_timeout_s)
    _logger.info(
        "otel-render %s: backend=%s, exporting %s",
        __version__,
        plan.backend,
        ", ".join(f"{name} via {'/'.join(p.exporters)}" for name, p in plan.signals.items() if p.exporters) or "nothing (local only)",
    )


def cardinality_limits(settings: Settings) -> dict[type, int]:
    """``OTEL_RENDER_METRIC_CARDINALITY_LIMIT`` for every instrument kind, the
    SDK's own per-instrument limit (overflow series ``otel.metric.overflow``).
    Every reader gets the same, so the local endpoints and the backend agree."""
    from opentelemetry.sdk.metrics import (  # pylint: disable=import-outside-toplevel
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics._internal.instrument import Gauge  # pylint: disable=import-outside-toplevel

    kinds = (Counter, UpDownCounter, Histogram, Gauge, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    return {kind: settings.metric_cardinality_limit for kind in kinds}


def build_resource(settings: Settings, auto_instrumentation_version: str | None = None) -> Resource:
    """Render's attributes under the user's: ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` always win."""
    attributes: dict[str, Any] = without_user_keys(render_resource_attributes(settings.environ), settings.environ)
    attributes["telemetry.distro.name"] = "otel-render"
    attributes["telemetry.distro.version"] = __version__
    if auto_instrumentation_version:
        attributes["telemetry.auto.version"] = auto_instrumentation_version
    created = Resource.create(attributes)
    return HashOnceResource(created.attributes, created.schema_url)


class HashOnceResource(Resource):
    """A :class:`Resource` that computes its hash once.

    The OTLP encoder groups every exported span and log record by resource,
    hashing it each time, and the SDK hashes by serialising every attribute
    to JSON: about 5 us per span here, for a value that never changes. A
    resource is immutable, so the hash is kept; :meth:`merge` (which the SDK
    calls after fork to refresh the process's attributes) returns this class
    again so the cache survives.
    """

    _hash: int | None = None

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = super().__hash__()
        return self._hash

    def merge(self, other: Resource) -> Resource:
        merged = super().merge(other)
        return HashOnceResource(merged.attributes, merged.schema_url)


def process_instance_id(settings: Settings) -> str | None:
    """``service.instance.id`` for this process, or None to keep the SDK's UUID.

    A user-set id wins (and is re-applied after fork, where the SDK would
    replace it with a fresh UUID). Under gunicorn: ``<instance>-master`` and
    ``<instance>-w<slot>``, where ``<instance>`` is ``RENDER_INSTANCE_ID`` on
    Render and ``<hostname>-<master pid>`` elsewhere.
    """
    if "service.instance.id" in user_resource_keys(settings.environ):
        for item in settings.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
            key, _, value = item.partition("=")
            if key.strip() == "service.instance.id":
                return value.strip()
    role, slot = gunicorn.identity()
    if role is None:
        return None
    base = settings.standard("RENDER_INSTANCE_ID") or f"{socket.gethostname()}-{gunicorn.master_pid()}"
    return f"{base}-master" if role == gunicorn.ROLE_MASTER else f"{base}-w{slot}"


def apply_process_identity(pipeline: Pipeline) -> None:
    """Put this process's instance id on every provider's resource."""
    instance_id = process_instance_id(pipeline.settings)
    if instance_id is None or not pipeline.owns_sdk:
        return
    update = Resource({SERVICE_INSTANCE_ID: instance_id})
    for provider in (pipeline.tracer_provider, pipeline.meter_provider, pipeline.logger_provider):
        # ``_update_resource`` is the method the SDK itself calls after fork.
        update_resource = getattr(provider, "_update_resource", None)
        if update_resource is not None:
            update_resource(update)
    pipeline.resource = pipeline.resource.merge(update)


# --------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------

_EXPORTER_GROUPS = {
    "traces": "opentelemetry_traces_exporter",
    "metrics": "opentelemetry_metrics_exporter",
    "logs": "opentelemetry_logs_exporter",
}


class ForkSafePeriodicExportingMetricReader(PeriodicExportingMetricReader):
    """The SDK's periodic reader, with its export lock re-created in a forked child.

    The SDK restarts the reader's thread after fork but keeps its export lock:
    if the parent's thread was exporting at that instant (a slow collector, a
    short export interval), the child's copy of the lock stays held forever
    and that worker never exports a metric again.
    """

    def _at_fork_reinit(self) -> None:
        self._export_lock = threading.Lock()
        super()._at_fork_reinit()


def fork_safe_session() -> Any:
    """A ``requests`` session for one OTLP/HTTP exporter whose connection pools
    start empty in every forked child: otherwise a worker would reuse the
    keep-alive socket its master (and every sibling) inherited, and their
    requests would interleave on one connection."""
    import requests  # pylint: disable=import-outside-toplevel
    from requests.adapters import HTTPAdapter  # pylint: disable=import-outside-toplevel

    session = requests.Session()

    def fresh_pools() -> None:
        for prefix in ("https://", "http://"):
            session.mount(prefix, HTTPAdapter())

    lifecycle.on_fork_child(fresh_pools)
    return session


def _exporters(plan: SignalPlan) -> list[Any]:
    """Instantiate the plan's exporters; one that cannot be built is logged and skipped."""
    built = []
    for name in plan.exporters:
        try:
            built.append(_otlp_exporter(plan) if name == "otlp" else _named_exporter(plan.signal, name))
        except Exception as exc:  # pylint: disable=broad-except
            _logger.warning("otel-render: cannot build the %s exporter %r (%s); skipping it", plan.signal, name, exc)
    return built


def _span_processors(plan: SignalPlan) -> Sequence[SpanProcessor]:
    # Scrubbed on the export thread: attributes other instrumentations add too.
    return [BatchSpanProcessor(scrub_export.ScrubbingSpanExporter(exporter)) for exporter in _exporters(plan)]


def _otlp_exporter(plan: SignalPlan) -> Any:
    kwargs: dict[str, Any] = {}
    if plan.endpoint is not None:
        kwargs["endpoint"] = plan.endpoint
    if plan.headers:
        kwargs["headers"] = dict(plan.headers)
    if plan.timeout_s is not None:
        kwargs["timeout"] = plan.timeout_s
    if plan.protocol == PROTOCOL_GRPC:
        # grpc is imported only when chosen.
        from opentelemetry.exporter.otlp.proto.grpc import (  # pylint: disable=import-outside-toplevel
            _log_exporter as grpc_logs,
            metric_exporter as grpc_metrics,
            trace_exporter as grpc_traces,
        )

        grpc_classes: dict[str, Callable[..., Any]] = {
            "traces": grpc_traces.OTLPSpanExporter,
            "metrics": grpc_metrics.OTLPMetricExporter,
            "logs": grpc_logs.OTLPLogExporter,
        }
        return grpc_classes[plan.signal](**kwargs)

    from opentelemetry.exporter.otlp.proto.http import (  # pylint: disable=import-outside-toplevel
        Compression,
        _log_exporter as http_logs,
        metric_exporter as http_metrics,
        trace_exporter as http_traces,
    )

    if plan.compression == "gzip":
        kwargs["compression"] = Compression.Gzip
    kwargs["session"] = fork_safe_session()
    http_classes: dict[str, Callable[..., Any]] = {
        "traces": http_traces.OTLPSpanExporter,
        "metrics": http_metrics.OTLPMetricExporter,
        "logs": http_logs.OTLPLogExporter,
    }
    return http_classes[plan.signal](**kwargs)


def _named_exporter(signal: str, name: str) -> Any:
    for entry_point in entry_points(group=_EXPORTER_GROUPS[signal], name=name):
        return entry_point.load()()
    raise LookupError(f"no exporter named {name!r} is installed for {signal} ({_EXPORTER_GROUPS[signal]})")


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


class OtelRenderDistro(BaseDistro):
    """``opentelemetry_distro`` entry point.

    Sets no environment variable (so no secret reaches child processes); the
    configurator does the work. Loading instrumentors, it skips contrib ones
    that ours supersede, so a request never gets two server spans.
    """

    def _configure(self, **kwargs: Any) -> None:
        get_settings()  # parse once, early: configuration problems are logged first

    def load_instrumentor(self, entry_point: EntryPoint, **kwargs: Any) -> None:
        if get_settings().sdk_disabled():
            return
        if entry_point.name in SUPERSEDED_CONTRIB_INSTRUMENTORS and not entry_point.value.startswith("otel_render"):
            _logger.info(
                "otel-render: not loading the contrib %r instrumentation; otel-render instruments it",
                entry_point.name,
            )
            return
        super().load_instrumentor(entry_point, **kwargs)


class OtelRenderConfigurator(_BaseConfigurator):
    """``opentelemetry_configurator`` entry point: builds the pipeline above."""

    def _configure(self, **kwargs: Any) -> None:
        configure_sdk(kwargs.get("auto_instrumentation_version"))
