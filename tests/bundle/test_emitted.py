"""The emitted-vs-documented comparison, on synthetic exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bundle import contract, emitted


@dataclass
class Point:
    attributes: dict[str, Any]


@dataclass
class Metric:
    name: str
    kind: str
    unit: str
    is_monotonic: bool | None = None
    scope: str = "otel_render.test"
    points: list[Point] = field(default_factory=list)


def _documented():
    return contract.package_contract()


def test_documented_metrics_with_the_right_shape_pass():
    received = [
        Metric("http.server.request.duration", "histogram", "s",
               points=[Point({"http.request.method": "GET", "http.route": "/", "http.response.status_code": 200, "url.scheme": "http"})]),
        # a second export of the same metric adds attributes seen on other points
        Metric("http.server.request.duration", "histogram", "s", points=[Point({"error.type": "500"})]),
        Metric("otel_render.scheduler.job.runs", "sum", "{run}", is_monotonic=True,
               points=[Point({"scheduler.name": "default", "job.id": "count-items", "outcome": "success"})]),
        Metric("http.server.active_requests", "sum", "{request}", is_monotonic=False),
        Metric("otel_render.db.status", "gauge", "1"),
    ]
    summary = emitted.summarize(received)
    assert summary["http.server.request.duration"].attributes >= {"http.route", "error.type"}
    assert emitted.emitted_problems(summary, _documented()) == []


def test_undocumented_names_kinds_units_and_attributes_are_reported():
    received = [
        Metric("http.server.duration", "histogram", "ms", scope="opentelemetry.instrumentation.flask"),
        Metric("otel_render.scheduler.job.runs", "sum", "{run}", is_monotonic=False),
        Metric("otel_render.db.status", "gauge", "{status}"),
        Metric("db.client.connection.count", "sum", "{connection}", is_monotonic=False,
               points=[Point({"db.client.connection.pool.name": "p", "db.client.connection.state": "idle", "db.statement": "SELECT 1"})]),
        Metric("process.memory.usage", "exponential_histogram", "By"),
    ]
    text = "\n".join(emitted.emitted_problems(emitted.summarize(received), _documented()))
    assert "http.server.duration (scope opentelemetry.instrumentation.flask) is emitted but not documented" in text
    assert "otel_render.scheduler.job.runs: emitted as ['sum'], documented as Counter (counter)" in text
    assert "otel_render.db.status: emitted with unit ['{status}'], documented as '1'" in text
    assert "db.client.connection.count: attributes ['db.statement'] are emitted but not documented" in text
    assert "process.memory.usage: emitted as ['exponential_histogram']" in text


def test_the_reverse_direction_lists_what_nobody_emitted():
    documented = _documented()
    everything_but_two = {
        row.name: emitted.EmittedMetric(row.name) for row in documented.rows
        if row.name not in ("otel_render.db.status", "otel_render.recovery.actions")
    }
    assert emitted.missing_from_emission(everything_but_two, documented, {}) == [
        "otel_render.db.status", "otel_render.recovery.actions"
    ]
    excused = {"otel_render.recovery.actions": "needs memory pressure"}
    assert emitted.missing_from_emission(everything_but_two, documented, excused) == ["otel_render.db.status"]
