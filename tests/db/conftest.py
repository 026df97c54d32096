"""Fixtures for the database tests: an instrumented SQLAlchemy with in-memory
span and metric readers, configured from a fake environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_render.config import Settings, use_settings
from otel_render.db import status as db_status
from otel_render.db.instrumentor import SQLAlchemyInstrumentor


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if name is None or span.name == name]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, point) of every point of ``metric`` collected now."""
        found = []
        data = self.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric_data in scope_metrics.metrics:
                    if metric_data.name == metric:
                        found += [(dict(point.attributes), point) for point in metric_data.data.data_points]
        return found

    def value(self, metric: str, **attributes: Any) -> Any:
        """The value (sum/gauge) or count (histogram) of the one point matching ``attributes``."""
        matching = [point for attrs, point in self.points(metric) if all(attrs.get(k) == v for k, v in attributes.items())]
        assert len(matching) == 1, (metric, attributes, self.points(metric))
        point = matching[0]
        return point.count if hasattr(point, "bucket_counts") else point.value


@pytest.fixture
def instrument(monkeypatch) -> Iterator[Callable[..., Telemetry]]:
    """``instrument(OTEL_RENDER_DB_TIMEOUT_S=2, ...)`` instruments SQLAlchemy with that environment."""
    instrumentor = SQLAlchemyInstrumentor()

    def start(**environment: Any) -> Telemetry:
        settings, problems = Settings.from_environ({key: str(value) for key, value in environment.items()})
        assert problems == []
        use_settings(settings)
        monkeypatch.setattr(db_status, "_databases", {})
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader]))
        return Telemetry(exporter, reader)

    yield start
    instrumentor.uninstrument()
    use_settings(None)
