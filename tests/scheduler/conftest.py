"""In-process harness for the scheduler tests: real APScheduler, the real SDK
with in-memory exporters, otel-render's instrumentor with an injectable clock.

``instrument(env=..., supervise=False, clock=FakeClock())`` installs settings
built from ``env`` (plus a private instance directory and no stagger unless
given), instruments APScheduler and returns a :class:`Harness`. Everything is
undone after the test: schedulers shut down, instrumentation removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.scheduler import Harness

from otel_render import diagnostics, lifecycle
from otel_render.config import Settings, use_settings
from otel_render.diagnostics import Ring
from otel_render.scheduler.instrumentor import APSchedulerInstrumentor


@pytest.fixture
def instrument(tmp_path, monkeypatch) -> Iterator[Callable[..., Harness]]:
    monkeypatch.setattr(lifecycle, "_registry", lifecycle._Registry())
    monkeypatch.setattr(diagnostics, "errors", Ring(50))
    monkeypatch.setattr(diagnostics, "stalls", Ring(50))
    monkeypatch.setattr(diagnostics, "actions", Ring(200))
    instrumentor = APSchedulerInstrumentor()
    harnesses: list[Harness] = []

    def make(env: dict[str, str] | None = None, *, supervise: bool = False, **kwargs: Any) -> Harness:
        base = {
            "OTEL_RENDER_INSTANCE_DIR": str(tmp_path / "instance"),
            "OTEL_RENDER_SCHEDULER_STAGGER_S": "0",
        }
        settings, problems = Settings.from_environ({**base, **(env or {})})
        assert problems == []
        use_settings(settings)
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, supervise=supervise, **kwargs
        )
        harness = Harness(exporter, reader, tracer_provider)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        for scheduler in harness.schedulers:
            if scheduler.running:
                stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": False}, daemon=True)
                stopper.start()
                stopper.join(10)
    instrumentor.uninstrument()
    use_settings(None)
