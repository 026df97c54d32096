"""Helpers for the scheduler tests: a clock the test moves, the in-process
harness around in-memory exporters, waiting on a condition, and a second
process contending for the scheduler's instance lock.

The ``instrument`` fixture installs settings built from ``env`` (plus a
private instance directory and no stagger unless given), instruments
APScheduler with in-memory exporters (``instrument(env=..., supervise=False,
clock=FakeClock())``) and returns a :class:`Harness`; everything is undone
after the test. ``tests/scheduler/conftest.py`` provides it to the unit
tests; an integration test module imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_render import diagnostics, instance, lifecycle
from otel_render.config import Settings, use_settings
from otel_render.diagnostics import Ring
from otel_render.scheduler.instrumentor import APSchedulerInstrumentor, current_stop, current_supervisor
from support import processes


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    schedulers: list[Any] = field(default_factory=list)

    @property
    def supervisor(self) -> Any:
        return current_supervisor()

    @property
    def stop(self) -> Any:
        return current_stop()

    def track(self, scheduler: Any) -> Any:
        """Shut ``scheduler`` down after the test."""
        self.schedulers.append(scheduler)
        return scheduler

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if name is None or span.name == name]

    def wait_for_spans(self, count: int, name: str | None = None, timeout: float = 15.0) -> list[ReadableSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans(name)
            if len(spans) >= count:
                return spans
            time.sleep(0.01)
        names = sorted({span.name for span in self.spans()})
        raise AssertionError(f"{count} span(s) {name or ''} not finished within {timeout} s; span names seen: {names}")

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for item in scope_metrics.metrics:
                    if item.name == metric:
                        found.extend(item.data.data_points)
        return found

    def value(self, metric: str, **attributes: Any) -> Any:
        """The sum (counters, gauges) or count (histograms) of the matching points."""
        total = 0
        for point in self.points(metric):
            if all(point.attributes.get(key.replace("_", ".")) == value for key, value in attributes.items()):
                total += point.count if hasattr(point, "count") else point.value
        return total


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, message: str = "condition") -> Any:
    """``processes.wait_until`` that fails the test, naming ``message``, on timeout."""
    result = processes.wait_until(predicate, timeout, interval=0.01)
    if not result:
        raise AssertionError(f"{message} not reached within {timeout} s")
    return result


#: The killed scheduler thread's exception reaches threading.excepthook, as it
#: does in an app: expected in tests that kill it.
thread_dies = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class BlipStore(MemoryJobStore):
    """A job store whose next-run-time query fails while ``failing`` is set,
    the way a database job store raises when its connection drops between
    two statements of the scheduler's loop."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = threading.Event()

    def get_next_run_time(self):
        if self.failing.is_set():
            raise ConnectionError("server closed the connection unexpectedly")
        return super().get_next_run_time()


class LockContender:
    """Another process of the instance: tries the scheduler lock on request,
    or holds it from the start (``hold=True``)."""

    def __init__(self, directory: Path, *, hold: bool = False) -> None:
        code = textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from otel_render.scheduler.leader import InstanceLock
            lock = InstanceLock(Path({str(directory)!r}))
            if {hold!r}:
                print("got" if lock.try_acquire() else "busy", flush=True)
            for _ in sys.stdin:
                print("got" if lock.try_acquire() else "busy", flush=True)
            """
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if hold:
            assert self.process.stdout.readline().strip() == "got"

    @property
    def pid(self) -> int:
        return self.process.pid

    def try_lock(self) -> str:
        """``"got"`` or ``"busy"``."""
        self.process.stdin.write("try\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def instance_run_directory(tmp_path: Path) -> Path:
    """Where the supervisor under test keeps its lock: the run directory of this
    (test) process under the ``OTEL_RENDER_INSTANCE_DIR`` the harness sets."""
    return instance.run_directory(tmp_path / "instance", os.getpid(), instance.start_time(os.getpid()))


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
