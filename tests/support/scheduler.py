"""Helpers for the scheduler tests: a clock the test moves, the in-process
harness around in-memory exporters, waiting on a condition, and a second
process contending for the scheduler's instance lock.

The ``instrument`` fixture that builds a :class:`Harness` lives in
``tests/scheduler/conftest.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_render.scheduler.instrumentor import current_stop, current_supervisor


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"{message} not reached within {timeout} s")




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
