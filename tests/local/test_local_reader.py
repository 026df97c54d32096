"""The local reader keeps the latest collection and, in a forked child,
forgets the events the parent had counted (in every reader of the provider)
while keeping the state the child inherits. When the export reader keeps the
same cumulative points, the local reader reads its aggregations instead of
aggregating every measurement a second time."""

from __future__ import annotations

import json
import os

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, ExponentialBucketHistogramAggregation

from otel_render.local.reader import LocalMetricReader, can_read_through
from otel_render.local.snapshot import series_from_metrics_data


def values(data) -> dict[str, float]:
    found = {}
    for name, series in series_from_metrics_data(data).items():
        found[name] = sum(point.count if series.kind == "histogram" else point.value for point in series.points)
    return found


def test_refresh_collects_now_and_latest_does_not():
    reader = LocalMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    counter = provider.get_meter("t").create_counter("app.requests")
    counter.add(2)
    first = reader.refresh()
    counter.add(3)
    assert values(reader.latest().data) == {"app.requests": 2}
    assert values(reader.refresh().data) == {"app.requests": 5}
    assert reader.latest().collected_at >= first.collected_at
    provider.shutdown()


def test_reading_through_the_export_reader_aggregates_each_measurement_once():
    exported = InMemoryMetricReader()  # stands in for the OTLP reader (cumulative, the exporter's default)
    local = LocalMetricReader()
    assert can_read_through(local, exported)
    provider = MeterProvider(metric_readers=[exported], shutdown_on_exit=False)
    local.read_through(exported)
    assert local.source is exported
    meter = provider.get_meter("t")
    requests = meter.create_counter("app.requests")
    latency = meter.create_histogram("app.latency")
    requests.add(2)
    latency.record(0.2)
    assert values(local.refresh().data) == {"app.requests": 2, "app.latency": 1}
    requests.add(3)
    # The export's cumulative points are not disturbed by the local collections, and the other way round.
    assert values(exported.get_metrics_data()) == {"app.requests": 5, "app.latency": 1}
    assert values(local.refresh().data) == {"app.requests": 5, "app.latency": 1}
    assert values(exported.get_metrics_data()) == {"app.requests": 5, "app.latency": 1}
    # One storage in the provider: each measurement was aggregated once.
    assert len(provider._measurement_consumer._reader_storages) == 1
    provider.shutdown()


@pytest.mark.parametrize(
    "export_reader",
    [
        InMemoryMetricReader(preferred_temporality={Counter: AggregationTemporality.DELTA}),
        InMemoryMetricReader(preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()}),
        InMemoryMetricReader(cardinality_limits={Counter: 10}),
        InMemoryMetricReader(preferred_aggregation={Histogram: ExplicitBucketHistogramAggregation([1.0, 2.0])}),
    ],
    ids=["delta", "exponential-histograms", "other-cardinality-limit", "other-buckets"],
)
def test_an_export_reader_that_keeps_other_points_is_not_read_through(export_reader):
    assert not can_read_through(LocalMetricReader(), export_reader)


def test_the_otlp_exporters_explicit_bucket_histograms_are_what_the_local_reader_keeps():
    # OTLPMetricExporter asks for ExplicitBucketHistogramAggregation() (the advised buckets).
    exported = InMemoryMetricReader(preferred_aggregation={Histogram: ExplicitBucketHistogramAggregation()})
    assert can_read_through(LocalMetricReader(), exported)


def test_the_local_reader_stays_cumulative_beside_a_delta_export():
    local = LocalMetricReader()
    exported = InMemoryMetricReader(preferred_temporality={Counter: AggregationTemporality.DELTA})
    provider = MeterProvider(metric_readers=[local, exported], shutdown_on_exit=False)
    requests = provider.get_meter("t").create_counter("app.requests")
    requests.add(2)
    assert values(exported.get_metrics_data()) == {"app.requests": 2}
    requests.add(3)
    assert values(exported.get_metrics_data()) == {"app.requests": 3}
    assert values(local.refresh().data) == {"app.requests": 5}
    provider.shutdown()


def test_read_through_needs_a_registered_source_and_an_unregistered_reader():
    with pytest.raises(ValueError):
        LocalMetricReader().read_through(InMemoryMetricReader())
    registered = LocalMetricReader()
    exported = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[registered, exported], shutdown_on_exit=False)
    with pytest.raises(ValueError):
        registered.read_through(exported)
    provider.shutdown()


@pytest.mark.parametrize("read_through", [False, True], ids=["own-storage", "read-through"])
def test_a_forked_child_starts_its_event_counts_from_zero_and_keeps_inherited_state(read_through):
    local = LocalMetricReader()
    exported = InMemoryMetricReader()  # stands in for the OTLP reader
    provider = MeterProvider(metric_readers=[exported] if read_through else [local, exported], shutdown_on_exit=False)
    if read_through:
        local.read_through(exported)
    meter = provider.get_meter("t")
    requests = meter.create_counter("app.requests")
    latency = meter.create_histogram("app.latency")
    pool_max = meter.create_up_down_counter("db.client.connection.max")
    requests.add(5)
    latency.record(0.2)
    pool_max.add(10)
    assert values(local.refresh().data) == {"app.requests": 5, "app.latency": 1, "db.client.connection.max": 10}

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a gunicorn worker does after fork
        try:
            os.close(read_end)
            local.reset_after_fork()
            requests.add(1)
            result = {"local": values(local.refresh().data), "exported": values(exported.get_metrics_data())}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)

    # Only the child's own request; the histogram starts empty; the pool size stays.
    assert child["local"] == {"app.requests": 1, "db.client.connection.max": 10}
    assert child["exported"] == {"app.requests": 1, "db.client.connection.max": 10}
    # The parent still has its own counts.
    assert values(local.refresh().data) == {"app.requests": 5, "app.latency": 1, "db.client.connection.max": 10}
    provider.shutdown()
