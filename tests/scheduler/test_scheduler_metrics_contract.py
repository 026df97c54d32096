"""The scheduler's meters are exactly the Scheduler rows of docs/metrics.md:
names, instruments, units and attribute keys."""

from __future__ import annotations

import re
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum
from support.scheduler import BlipStore, FakeClock, thread_dies

METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
KINDS = {"Histogram": Histogram, "Counter": Sum, "Gauge": Gauge}


def _documented() -> dict[str, tuple[str, str, set[str]]]:
    text = METRICS_DOC.read_text()
    section = text.split("## Scheduler", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([a-z_.]+)` \| (\w+)(?: \(observable\))? \| `([^`]+)` \| ([^|]*) \|", line)
        if match:
            name, instrument, unit, attributes = match.groups()
            rows[name] = (instrument, unit, set(re.findall(r"`([a-z_.]+)`", attributes)))
    return rows


def beat():
    pass


@thread_dies
def test_every_scheduler_meter_matches_its_documented_row(instrument):
    clock = FakeClock()
    harness = instrument({"OTEL_RENDER_SCHEDULER_RESTART_BACKOFF_S": "0"}, clock=clock)
    store = BlipStore()
    scheduler = harness.track(BackgroundScheduler(jobstores={"default": store}))
    scheduler.add_job(beat, "interval", seconds=0.05, id="beat")
    scheduler.start()
    harness.wait_for_spans(1, "job beat")
    store.failing.set()
    scheduler._thread.join(15)
    store.failing.clear()
    harness.supervisor.tick()  # restarts it

    emitted = {}
    for resource_metrics in harness.reader.get_metrics_data().resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                keys = set().union(*(set(point.attributes) for point in metric.data.data_points))
                emitted[metric.name] = (type(metric.data), metric.unit, keys)
    documented = _documented()
    assert set(emitted) == set(documented)
    for name, (kind, unit, keys) in emitted.items():
        instrument, documented_unit, documented_keys = documented[name]
        assert kind is KINDS[instrument], name
        assert unit == documented_unit, name
        assert keys == documented_keys, name
