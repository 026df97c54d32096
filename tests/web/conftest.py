"""An in-memory OpenTelemetry SDK for the web layer's unit tests.

``telemetry`` builds its own tracer and meter providers (the process-wide ones
can be set only once), hands them to a fresh :class:`WebRuntime`, and clears
the rings, local routes and route probes around each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_render import correlation, diagnostics
from otel_render.config import Settings
from otel_render.distro import cardinality_limits
from otel_render.web import local_routes, wsgi


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    runtime: wsgi.WebRuntime
    tracer_provider: TracerProvider

    def server_spans(self) -> list[Any]:
        return [span for span in self.spans.get_finished_spans() if span.kind.name == "SERVER"]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


def make_telemetry(environ: dict[str, str] | None = None, worker_timeout_s: float | None = None) -> Telemetry:
    settings, problems = Settings.from_environ(environ or {})
    assert problems == []
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(id_generator=correlation.CorrelationIdGenerator(), shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader(cardinality_limits=cardinality_limits(settings))
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    runtime = wsgi.WebRuntime(
        settings, tracer_provider=tracer_provider, meter_provider=meter_provider, worker_timeout_s=worker_timeout_s
    )
    return Telemetry(spans, reader, runtime, tracer_provider)


@pytest.fixture
def telemetry_factory() -> Iterator[Any]:
    made: list[Telemetry] = []

    def make(environ: dict[str, str] | None = None, worker_timeout_s: float | None = None) -> Telemetry:
        telemetry = make_telemetry(environ, worker_timeout_s)
        made.append(telemetry)
        wsgi.use_runtime(telemetry.runtime)
        return telemetry

    local_routes.clear()
    for ring in (diagnostics.errors, diagnostics.stalls):
        ring.clear()
    wsgi._routes_settled = False  # pylint: disable=protected-access
    yield make
    for telemetry in made:
        telemetry.runtime.watchdog.stop(0)
    wsgi.use_runtime(None)
    local_routes.clear()
    wsgi._route_probes.clear()  # pylint: disable=protected-access
    wsgi._routes_settled = False  # pylint: disable=protected-access


@pytest.fixture
def telemetry(telemetry_factory) -> Telemetry:
    return telemetry_factory()
