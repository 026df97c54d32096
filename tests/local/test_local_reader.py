"""The local reader keeps the latest collection and, in a forked child,
forgets the events the parent had counted (in every reader of the provider)
while keeping the state the child inherits."""

from __future__ import annotations

import json
import os

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_render.local.reader import LocalMetricReader
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


def test_a_forked_child_starts_its_event_counts_from_zero_and_keeps_inherited_state():
    local = LocalMetricReader()
    exported = InMemoryMetricReader()  # stands in for the OTLP reader
    provider = MeterProvider(metric_readers=[local, exported], shutdown_on_exit=False)
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
