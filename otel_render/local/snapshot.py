"""The points of one process as plain data, and their merge into the view of
the whole instance.

A gunicorn instance is several processes (the master and its workers), each
with its own meter provider. Each process turns its latest collection into a
:class:`ProcessSnapshot` (plain, JSON-able) and publishes it (see
:mod:`otel_render.local.store`); whoever serves an endpoint merges the live
snapshots, plus what exited processes counted, into one
:class:`InstanceMetrics`. The merge rules:

- monotonic counters and histograms are summed (same attributes, same
  bucket bounds): the instance served the sum of its workers' requests;
- up-down counters are summed too (in-flight requests, pool connections);
- per-process metrics (``process.*``, ``cpython.*``, ``otel_render.process.*``)
  and gauges are never summed (summing RSS counts the pages the workers share
  with the ``--preload`` master several times): each point is kept and tagged
  with ``service.instance.id`` and ``process.pid``;
- instance metrics (``otel_render.instance.*``: the cgroup's memory, the
  same for every process) are taken from the freshest snapshot.

Everything here is a pure function of its inputs, so it is tested without
processes or files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricsData,
    Sum,
)

SUM = "sum"
GAUGE = "gauge"
HISTOGRAM = "histogram"

#: Metrics that describe one process: never summed across the instance.
PER_PROCESS_PREFIXES = ("process.", "cpython.", "otel_render.process.")
#: Metrics that describe the instance itself (every process reports the same).
INSTANCE_PREFIXES = ("otel_render.instance.",)

PROCESS_ID_KEY = "service.instance.id"
PROCESS_PID_KEY = "process.pid"

Attributes = tuple[tuple[str, Any], ...]


def attribute_key(attributes: Mapping[str, Any] | None) -> Attributes:
    """A hashable, ordered form of a point's attributes."""
    if not attributes:
        return ()
    return tuple(sorted((str(key), _plain(value)) for key, value in attributes.items()))


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_plain(item) for item in value)
    return value


@dataclass(frozen=True)
class Point:
    """One data point: ``value`` for sums and gauges, the rest for histograms."""

    attributes: Attributes
    value: float = 0.0
    count: int = 0
    sum: float = 0.0
    bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()
    min: float | None = None
    max: float | None = None

    def attribute(self, key: str, default: Any = None) -> Any:
        for name, value in self.attributes:
            if name == key:
                return value
        return default

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.attributes)


@dataclass(frozen=True)
class Series:
    """One metric of one process (or of the merged instance)."""

    name: str
    kind: str  # sum | gauge | histogram
    unit: str = ""
    monotonic: bool = False
    points: tuple[Point, ...] = ()

    @property
    def cumulative_total(self) -> bool:
        """Counts events (kept after the process exits), as opposed to describing state."""
        return self.kind == HISTOGRAM or (self.kind == SUM and self.monotonic)


@dataclass(frozen=True)
class ProcessInfo:
    """Which process a snapshot came from."""

    pid: int
    started: float  # process start time (seconds since the epoch), tells a reused pid apart
    instance_id: str | None = None  # this process's service.instance.id
    role: str | None = None  # master | worker | None outside gunicorn
    slot: int | None = None

    @property
    def label(self) -> str:
        return self.instance_id or f"pid-{self.pid}"

    @property
    def key(self) -> str:
        return f"{self.pid}-{self.started:.2f}"


@dataclass(frozen=True)
class ProcessSnapshot:
    """The latest points of one process, and the health check results it saw."""

    process: ProcessInfo
    collected_at: float
    series: Mapping[str, Series] = field(default_factory=dict)
    checks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    # -- JSON ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "process": {
                "pid": self.process.pid,
                "started": self.process.started,
                "instance_id": self.process.instance_id,
                "role": self.process.role,
                "slot": self.process.slot,
            },
            "collected_at": self.collected_at,
            "series": [series_to_json(series) for series in self.series.values()],
            "checks": {name: dict(result) for name, result in self.checks.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> ProcessSnapshot:
        """Raises ValueError (or KeyError, TypeError) on anything but a snapshot."""
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ValueError("not a version 1 snapshot")
        process = data["process"]
        info = ProcessInfo(
            pid=int(process["pid"]),
            started=float(process["started"]),
            instance_id=process.get("instance_id"),
            role=process.get("role"),
            slot=process.get("slot"),
        )
        series = {}
        for raw in data.get("series", ()):
            parsed = series_from_json(raw)
            series[parsed.name] = parsed
        checks = {str(name): dict(result) for name, result in (data.get("checks") or {}).items()}
        return cls(info, float(data["collected_at"]), series, checks)


def series_to_json(series: Series) -> dict[str, Any]:
    points = []
    for point in series.points:
        entry: dict[str, Any] = {"a": [list(pair) for pair in point.attributes]}
        if series.kind == HISTOGRAM:
            entry.update(
                c=point.count,
                s=point.sum,
                b=list(point.bounds),
                n=list(point.bucket_counts),
                lo=point.min,
                hi=point.max,
            )
        else:
            entry["v"] = point.value
        points.append(entry)
    return {
        "name": series.name,
        "kind": series.kind,
        "unit": series.unit,
        "monotonic": series.monotonic,
        "points": points,
    }


def series_from_json(raw: Mapping[str, Any]) -> Series:
    kind = raw["kind"]
    if kind not in (SUM, GAUGE, HISTOGRAM):
        raise ValueError(f"unknown series kind {kind!r}")
    points = []
    for entry in raw.get("points", ()):
        attributes = tuple((str(key), _plain(value)) for key, value in entry.get("a", ()))
        if kind == HISTOGRAM:
            points.append(
                Point(
                    attributes,
                    count=int(entry["c"]),
                    sum=float(entry["s"]),
                    bounds=tuple(float(b) for b in entry["b"]),
                    bucket_counts=tuple(int(n) for n in entry["n"]),
                    min=entry.get("lo"),
                    max=entry.get("hi"),
                )
            )
        else:
            points.append(Point(attributes, value=entry["v"]))
    return Series(str(raw["name"]), kind, str(raw.get("unit", "")), bool(raw.get("monotonic")), tuple(points))


# --------------------------------------------------------------------------
# From the SDK's collection
# --------------------------------------------------------------------------


def series_from_metrics_data(data: MetricsData | None) -> dict[str, Series]:
    """The SDK's ``MetricsData`` as plain series, by metric name.

    Exponential histograms are left out (otel-render records none; their
    buckets do not merge with explicit ones). Two scopes emitting the same
    name are merged like two processes would be.
    """
    found: dict[str, Series] = {}
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                series = _series_from_metric(metric.name, metric.unit or "", metric.data)
                if series is None:
                    continue
                previous = found.get(series.name)
                found[series.name] = series if previous is None else _merge_two(previous, series)
    return found


def _series_from_metric(name: str, unit: str, data: Any) -> Series | None:
    """One metric as a plain series; points whose value is not a finite number
    (NaN, infinity: JSON cannot carry them) are left out."""
    if isinstance(data, Histogram):
        points = tuple(_histogram_point(point) for point in data.data_points if math.isfinite(point.sum))
        return Series(name, HISTOGRAM, unit, True, points)
    if isinstance(data, (Sum, Gauge)):
        points = tuple(
            Point(attribute_key(p.attributes), value=p.value) for p in data.data_points if math.isfinite(p.value)
        )
        if isinstance(data, Sum):
            return Series(name, SUM, unit, bool(data.is_monotonic), points)
        return Series(name, GAUGE, unit, False, points)
    return None


def _histogram_point(point: HistogramDataPoint) -> Point:
    return Point(
        attribute_key(point.attributes),
        count=int(point.count),
        sum=float(point.sum),
        bounds=tuple(float(bound) for bound in point.explicit_bounds),
        bucket_counts=tuple(int(count) for count in point.bucket_counts),
        min=_finite(point.min),
        max=_finite(point.max),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------


def is_per_process(name: str) -> bool:
    return name.startswith(PER_PROCESS_PREFIXES)


def is_instance_wide(name: str) -> bool:
    return name.startswith(INSTANCE_PREFIXES)


def _add_points(kind: str, left: Point, right: Point) -> Point | None:
    """Two points of the same series and attributes, added (None: incompatible)."""
    if kind == HISTOGRAM:
        if left.bounds != right.bounds:
            return None
        return Point(
            left.attributes,
            count=left.count + right.count,
            sum=left.sum + right.sum,
            bounds=left.bounds,
            bucket_counts=tuple(a + b for a, b in zip(left.bucket_counts, right.bucket_counts)),
            min=_pick(min, left.min, right.min),
            max=_pick(max, left.max, right.max),
        )
    return Point(left.attributes, value=left.value + right.value)


def _pick(function: Any, left: float | None, right: float | None) -> float | None:
    values = [value for value in (left, right) if value is not None]
    return function(values) if values else None


def _merge_two(left: Series, right: Series) -> Series:
    """Sum the points of two series of the same name (kinds must agree)."""
    if left.kind != right.kind:
        return left
    by_key: dict[Attributes, Point] = {point.attributes: point for point in left.points}
    for point in right.points:
        existing = by_key.get(point.attributes)
        if existing is None:
            by_key[point.attributes] = point
        else:
            added = _add_points(left.kind, existing, point)
            if added is not None:
                by_key[point.attributes] = added
    return replace(left, points=tuple(by_key.values()))


def retained_part(series: Mapping[str, Series]) -> dict[str, Series]:
    """What a process that exited leaves behind: its counts of events.

    Monotonic counters and histograms (requests served, jobs run) stay part of
    the instance's totals; state (in-flight requests, pool connections, memory)
    and per-process series go with the process.
    """
    return {
        name: item
        for name, item in series.items()
        if item.cumulative_total and not is_per_process(name) and not is_instance_wide(name)
    }


def add_series(total: Mapping[str, Series], more: Mapping[str, Series]) -> dict[str, Series]:
    """``total`` plus ``more``, series by series (used to accumulate retired processes)."""
    merged = dict(total)
    for name, item in more.items():
        merged[name] = item if name not in merged else _merge_two(merged[name], item)
    return merged


def _tagged(series: Series, process: ProcessInfo) -> Series:
    tags = ((PROCESS_ID_KEY, process.label), (PROCESS_PID_KEY, process.pid))
    points = tuple(replace(point, attributes=tuple(sorted(point.attributes + tags))) for point in series.points)
    return replace(series, points=points)


@dataclass(frozen=True)
class InstanceMetrics:
    """The merged metrics of every live process of the instance, plus what
    exited processes counted."""

    series: Mapping[str, Series]
    processes: tuple[ProcessSnapshot, ...]
    collected_at: float
    retired_processes: int = 0

    def get(self, name: str) -> Series | None:
        return self.series.get(name)

    def points(self, name: str) -> tuple[Point, ...]:
        series = self.series.get(name)
        return series.points if series is not None else ()

    def names(self) -> list[str]:
        return sorted(self.series)

    def checks_by_process(self) -> Iterator[tuple[ProcessInfo, Mapping[str, Mapping[str, Any]]]]:
        for snapshot in self.processes:
            yield snapshot.process, snapshot.checks


def merge_instance(
    processes: Iterable[ProcessSnapshot],
    retired: Mapping[str, Series] | None = None,
    retired_processes: int = 0,
) -> InstanceMetrics:
    """Merge live process snapshots and the retired totals (rules in the module docstring)."""
    ordered = sorted(processes, key=lambda snapshot: snapshot.collected_at)
    merged: dict[str, Series] = {name: item for name, item in (retired or {}).items()}
    freshest: dict[str, Series] = {}
    for snapshot in ordered:
        for name, item in snapshot.series.items():
            if is_instance_wide(name):
                freshest[name] = item  # later snapshots overwrite earlier ones
                continue
            if is_per_process(name) or item.kind == GAUGE:
                item = _tagged(item, snapshot.process)
            merged[name] = item if name not in merged else _merge_two(merged[name], item)
    merged.update(freshest)
    collected_at = ordered[-1].collected_at if ordered else 0.0
    return InstanceMetrics(merged, tuple(ordered), collected_at, retired_processes)


# --------------------------------------------------------------------------
# Histograms: quantiles and windows
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Buckets:
    """An explicit-bucket histogram reduced to what quantiles need."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: int
    sum: float = 0.0
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, points: Iterable[Point]) -> Buckets | None:
        """The sum of ``points`` that share the first point's bounds (others are skipped)."""
        merged: Point | None = None
        for point in points:
            if merged is None:
                merged = point
            else:
                merged = _add_points(HISTOGRAM, merged, replace(point, attributes=merged.attributes)) or merged
        if merged is None:
            return None
        return cls(merged.bounds, merged.bucket_counts, merged.count, merged.sum, merged.min, merged.max)

    def minus(self, earlier: Buckets | None) -> Buckets:
        """What was recorded since ``earlier`` (counts never go below zero; min
        and max are unknown for a difference)."""
        if earlier is None or earlier.bounds != self.bounds:
            return self
        counts = tuple(max(0, now - before) for now, before in zip(self.counts, earlier.counts))
        return Buckets(self.bounds, counts, sum(counts), max(0.0, self.sum - earlier.sum))

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.bounds, self.counts, self.min, self.max)


def histogram_quantile(
    q: float,
    bounds: tuple[float, ...],
    counts: tuple[int, ...],
    observed_min: float | None = None,
    observed_max: float | None = None,
) -> float | None:
    """The ``q`` quantile from explicit buckets, interpolated linearly inside the
    bucket it falls in (as Prometheus' ``histogram_quantile`` does).

    A bucket's range is narrowed to the smallest and largest values observed
    when they are known (a bucket ``(0, 5]`` holding values up to 0.3 is read
    as ``(0, 0.3]``). The first bucket starts at 0 (or the minimum); the
    overflow bucket ends at the maximum, else its lower bound is returned.
    None when there is no observation.
    """
    total = sum(counts)
    if total <= 0 or not 0 <= q <= 1:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(counts):
        if count > 0 and cumulative + count >= rank:
            lower = bounds[index - 1] if index > 0 else min(0.0, observed_min or 0.0)
            upper = bounds[index] if index < len(bounds) else None
            if observed_min is not None and observed_min > lower:
                lower = observed_min
            if observed_max is not None and (upper is None or observed_max < upper):
                upper = observed_max
            if upper is None or upper <= lower:
                return lower
            fraction = (rank - cumulative) / count
            return lower + (upper - lower) * max(0.0, min(1.0, fraction))
        cumulative += count
    return observed_max if observed_max is not None else (bounds[-1] if bounds else None)
