"""Process and instance meters: exactly the rows of docs/metrics.md, the
instance's memory from a (fake) cgroup, GC counted from the fork on, and the
memoryUsage of error contexts."""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from otel_render.config import Settings
from otel_render.local.reader import LocalMetricReader
from otel_render.local.snapshot import series_from_metrics_data
from otel_render.platform import MIB, HostFS
from otel_render.runtime import RuntimeMeters, create_instruments, memory_metrics

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
EXPECTED_KIND = {
    "UpDownCounter (observable)": ("sum", False),
    "Counter (observable)": ("sum", True),
    "Gauge (observable)": ("gauge", False),
}


def documented_rows(section: str) -> dict[str, tuple[str, str, str]]:
    text = DOCS.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        match = re.match(r"^\| `([^`]+)` \|([^|]+)\| `([^`]*)` \|([^|]*)\|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3), match.group(4).strip())
    return rows


def cgroup_root(root: Path, *, limit: int, current: int, inactive: int) -> HostFS:
    files = {
        "proc/self/cgroup": "0::/\n",
        "proc/self/mountinfo": "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
        "proc/meminfo": "MemTotal:       16384000 kB\n",
        "sys/fs/cgroup/memory.max": f"{limit}\n",
        "sys/fs/cgroup/memory.current": f"{current}\n",
        "sys/fs/cgroup/memory.stat": f"anon 1\ninactive_file {inactive}\n",
    }
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return HostFS(root)


@pytest.fixture
def collected(tmp_path):
    fs = cgroup_root(tmp_path, limit=512 * MIB, current=300 * MIB, inactive=44 * MIB)
    settings, _ = Settings.from_environ({})
    reader = LocalMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    meters = RuntimeMeters(settings, fs)
    create_instruments(provider, meters)
    yield series_from_metrics_data(reader.refresh().data), meters
    provider.shutdown()


def test_the_meters_are_exactly_the_documented_rows(collected):
    series, _ = collected
    documented = documented_rows("Process and runtime")
    assert set(series) == set(documented)
    for name, (instrument, unit, attributes) in documented.items():
        kind, monotonic = EXPECTED_KIND[instrument]
        assert (series[name].kind, series[name].monotonic, series[name].unit) == (kind, monotonic, unit), name
        keys = {key for point in series[name].points for key, _ in point.attributes}
        assert keys == {item.strip(" `") for item in attributes.split(",") if item.strip()}, name


def test_the_values_are_this_process_and_the_instance_cgroup(collected):
    series, _ = collected
    usage = series["otel_render.instance.memory.usage"].points[0].value
    assert usage == 256 * MIB  # memory.current minus inactive file cache
    assert series["otel_render.instance.memory.limit"].points[0].value == 512 * MIB
    assert series["otel_render.instance.memory.utilization"].points[0].value == pytest.approx(0.5)
    rss = series["process.memory.usage"].points[0].value
    assert 1 * MIB < rss < 64 * 1024 * MIB
    assert 0 < series["otel_render.process.memory.uss"].points[0].value <= rss
    modes = {point.attribute("cpu.mode") for point in series["process.cpu.time"].points}
    assert modes == {"user", "system"}
    assert {point.attribute("cpython.gc.generation") for point in series["cpython.gc.collections"].points} == {0, 1, 2}


def test_a_forked_worker_counts_garbage_collections_from_the_fork(collected):
    _, meters = collected
    gc.collect()
    assert sum(entry["collections"] for entry in meters.gc_stats()) > 0
    meters.reset_after_fork()
    assert sum(entry["collections"] for entry in meters.gc_stats()) == 0
    gc.collect()
    assert meters.gc_stats()[2]["collections"] == 1


def test_error_contexts_get_the_seeds_memory_usage_from_the_last_readings(collected):
    _, meters = collected
    state = meters.memory_state()["memoryUsage"]
    assert state["heapUsed"] == 256 * MIB and state["heapTotal"] == 512 * MIB
    assert state["usagePercent"] == 50.0 and state["source"] == "cgroup"
    assert state["pid"] == os.getpid() and state["rss"] > 0


def test_the_seeds_memory_fields_have_a_python_meaning():
    metrics = memory_metrics(instance_usage=300, limit=1000, uss_total=200, gc_count=7)
    assert metrics == {
        "heapUsed": 300,
        "heapTotal": 1000,
        "external": 100,
        "usagePercent": 30.0,
        "gcCount": 7,
        "source": "cgroup",
    }
    without_cgroup = memory_metrics(instance_usage=None, limit=1000, uss_total=None, gc_count=0, fallback_usage=400)
    assert without_cgroup["heapUsed"] == 400 and without_cgroup["external"] is None
    assert without_cgroup["source"].startswith("process rss")
