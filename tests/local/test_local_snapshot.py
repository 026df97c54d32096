"""Process snapshots from the real SDK, their JSON form, the merge rules of the
instance view, and quantiles from explicit buckets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider

from otel_render.local.reader import LocalMetricReader
from otel_render.local.snapshot import (
    GAUGE,
    HISTOGRAM,
    SUM,
    Buckets,
    Point,
    ProcessInfo,
    ProcessSnapshot,
    Series,
    histogram_quantile,
    merge_instance,
    retained_part,
    series_from_metrics_data,
)

BOUNDS = (0.1, 0.5, 1.0)


def recorded_series(record) -> dict[str, Series]:
    reader = LocalMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        record(provider.get_meter("test"))
        return series_from_metrics_data(reader.refresh().data)
    finally:
        provider.shutdown()


def test_the_sdks_collection_becomes_plain_series_of_each_kind():
    def record(meter):
        meter.create_counter("app.requests").add(3, {"route": "/"})
        meter.create_up_down_counter("app.active").add(2)
        meter.create_histogram("app.latency", unit="s", explicit_bucket_boundaries_advisory=list(BOUNDS)).record(0.3)
        meter.create_observable_gauge("app.temperature", [lambda _: [Observation(21.5)]])

    series = recorded_series(record)
    assert series["app.requests"] == Series("app.requests", SUM, "", True, (Point((("route", "/"),), value=3),))
    assert series["app.active"].kind == SUM and not series["app.active"].monotonic
    latency = series["app.latency"]
    assert latency.kind == HISTOGRAM and latency.unit == "s"
    assert latency.points[0].bounds == BOUNDS and latency.points[0].bucket_counts == (0, 1, 0, 0)
    assert latency.points[0].min == latency.points[0].max == 0.3
    assert series["app.temperature"].kind == GAUGE and series["app.temperature"].points[0].value == 21.5


def test_a_snapshot_survives_its_json_form():
    def record(meter):
        meter.create_counter("app.requests").add(3, {"route": "/", "codes": (200, 201)})
        meter.create_histogram("app.latency", explicit_bucket_boundaries_advisory=list(BOUNDS)).record(2.0)

    snapshot = ProcessSnapshot(
        ProcessInfo(123, 1000.5, "srv-w0", "worker", 0),
        1001.0,
        recorded_series(record),
        {"memory": {"status": "healthy", "output": "ok"}},
    )
    again = ProcessSnapshot.from_json(json.loads(json.dumps(snapshot.to_json())))
    assert again == snapshot


def process(pid: int, collected_at: float, series: dict[str, Series], label: str | None = None) -> ProcessSnapshot:
    return ProcessSnapshot(ProcessInfo(pid, 100.0 + pid, label or f"w{pid}"), collected_at, series)


def counter(name: str, value: float, **attributes) -> Series:
    return Series(name, SUM, "", True, (Point(tuple(sorted(attributes.items())), value=value),))


def histogram(name: str, counts: tuple[int, ...], total: float) -> Series:
    point = Point((), count=sum(counts), sum=total, bounds=BOUNDS, bucket_counts=counts, min=0.05, max=2.0)
    return Series(name, HISTOGRAM, "s", True, (point,))


def gauge(name: str, value: float) -> Series:
    return Series(name, GAUGE, "By", False, (Point((), value=value),))


def test_counters_and_histograms_are_summed_over_the_processes():
    view = merge_instance(
        [
            process(
                1,
                10.0,
                {"app.requests": counter("app.requests", 4, route="/"), "lat": histogram("lat", (1, 2, 0, 1), 3.0)},
            ),
            process(
                2,
                11.0,
                {"app.requests": counter("app.requests", 6, route="/"), "lat": histogram("lat", (0, 1, 1, 0), 1.0)},
            ),
        ]
    )
    assert view.points("app.requests")[0].value == 10
    merged = view.points("lat")[0]
    assert merged.bucket_counts == (1, 3, 1, 1) and merged.count == 6 and merged.sum == 4.0


def test_per_process_metrics_and_gauges_are_kept_per_process_never_summed():
    view = merge_instance(
        [
            process(
                1,
                10.0,
                {
                    "process.memory.usage": Series("process.memory.usage", SUM, "By", False, (Point((), value=100),)),
                    "otel_render.db.status": gauge("otel_render.db.status", 1),
                },
            ),
            process(
                2,
                11.0,
                {
                    "process.memory.usage": Series("process.memory.usage", SUM, "By", False, (Point((), value=200),)),
                    "otel_render.db.status": gauge("otel_render.db.status", 0),
                },
            ),
        ]
    )
    rss = {point.attribute("process.pid"): point.value for point in view.points("process.memory.usage")}
    assert rss == {1: 100, 2: 200}
    assert {point.attribute("service.instance.id") for point in view.points("process.memory.usage")} == {"w1", "w2"}
    assert sorted(point.value for point in view.points("otel_render.db.status")) == [0, 1]


def test_instance_metrics_come_from_the_freshest_process():
    view = merge_instance(
        [
            process(2, 20.0, {"otel_render.instance.memory.usage": gauge("otel_render.instance.memory.usage", 900)}),
            process(1, 10.0, {"otel_render.instance.memory.usage": gauge("otel_render.instance.memory.usage", 500)}),
        ]
    )
    assert [point.value for point in view.points("otel_render.instance.memory.usage")] == [900]


def test_an_exited_process_leaves_its_event_counts_and_nothing_else():
    series = {
        "app.requests": counter("app.requests", 7),
        "lat": histogram("lat", (1, 0, 0, 0), 0.05),
        "http.server.active_requests": Series("http.server.active_requests", SUM, "", False, (Point((), value=1),)),
        "process.cpu.time": counter("process.cpu.time", 3.5),
        "otel_render.db.status": gauge("otel_render.db.status", 1),
    }
    assert set(retained_part(series)) == {"app.requests", "lat"}
    view = merge_instance([process(2, 5.0, {"app.requests": counter("app.requests", 1)})], retained_part(series), 1)
    assert view.points("app.requests")[0].value == 8
    assert view.retired_processes == 1


def test_histograms_with_different_bounds_are_not_mixed():
    other = Series("lat", HISTOGRAM, "s", True, (Point((), count=1, sum=1.0, bounds=(1.0,), bucket_counts=(1, 0)),))
    view = merge_instance(
        [process(1, 1.0, {"lat": histogram("lat", (1, 0, 0, 0), 0.05)}), process(2, 2.0, {"lat": other})]
    )
    assert view.points("lat")[0].bounds == BOUNDS and view.points("lat")[0].count == 1


# --- quantiles -------------------------------------------------------------------


def test_quantiles_interpolate_inside_the_bucket_they_fall_in():
    bounds = (1.0, 2.0, 4.0)
    counts = (10, 10, 20, 0)
    assert histogram_quantile(0.25, bounds, counts) == pytest.approx(1.0)
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(2.0)
    assert histogram_quantile(0.75, bounds, counts) == pytest.approx(3.0)
    assert histogram_quantile(0.5, bounds, (0, 0, 0, 0)) is None


def test_quantiles_stay_within_the_values_observed():
    # Everything fell in the wide first bucket (0, 5], but nothing was above 0.3.
    assert histogram_quantile(0.99, (5.0, 10.0), (100, 0, 0), observed_min=0.01, observed_max=0.3) <= 0.3
    # The overflow bucket ends at the largest value observed.
    assert histogram_quantile(1.0, (1.0,), (0, 4), observed_max=7.0) == pytest.approx(7.0)
    assert histogram_quantile(1.0, (1.0,), (0, 4)) == 1.0


@given(
    counts=st.lists(st.integers(min_value=0, max_value=50), min_size=4, max_size=4),
    q1=st.floats(min_value=0, max_value=1),
    q2=st.floats(min_value=0, max_value=1),
)
def test_quantiles_are_monotonic_and_inside_the_observed_range(counts, q1, q2):
    bounds = (0.1, 0.5, 1.0)
    low, high = sorted((q1, q2))
    a = histogram_quantile(low, bounds, tuple(counts), 0.01, 3.0)
    b = histogram_quantile(high, bounds, tuple(counts), 0.01, 3.0)
    if sum(counts) == 0:
        assert a is None and b is None
        return
    assert 0.0 <= a <= b <= 3.0


def test_a_window_is_the_difference_of_two_cumulative_histograms():
    before = Buckets((1.0,), (2, 1), 3, 4.0)
    after = Buckets((1.0,), (5, 1), 6, 5.5)
    delta = after.minus(before)
    assert delta.counts == (3, 0) and delta.total == 3 and delta.sum == pytest.approx(1.5)


def test_values_json_cannot_carry_are_left_out():
    def record(meter):
        meter.create_observable_gauge("app.ratio", [lambda _: [Observation(float("nan"), {"a": 1}), Observation(0.5)]])

    series = recorded_series(record)
    assert [point.value for point in series["app.ratio"].points] == [0.5]
    json.dumps(ProcessSnapshot(ProcessInfo(1, 1.0), 1.0, series).to_json(), allow_nan=False)
