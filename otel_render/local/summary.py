"""What the local endpoints say about the instance, computed from the merged
metrics (:class:`~otel_render.local.snapshot.InstanceMetrics`) by the names
``docs/metrics.md`` fixes.

Each function takes the merged view and returns plain JSON-able data; a
section whose metrics are not emitted (no database instrumented, no
scheduler, no exporter) comes out empty rather than failing, so the endpoints
fill in as integrations are installed. Latencies are in seconds, as the
histograms record them; quantiles are interpolated inside the histogram's
buckets (as Prometheus' ``histogram_quantile``), so they are estimates as
fine as the bucket bounds.

:class:`RequestHistory` keeps the instance's request histogram at each
evaluation, so p95 and error rate can be given over a recent window rather
than since the start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_render import runtime
from otel_render.local.snapshot import (
    HISTOGRAM,
    PROCESS_ID_KEY,
    PROCESS_PID_KEY,
    Buckets,
    InstanceMetrics,
    Point,
)
from otel_render.runtime import memory_metrics

HTTP_DURATION = "http.server.request.duration"
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
#: Fewer requests than this in the window say nothing about an error rate.
MIN_REQUESTS_FOR_RATE = 20


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def quantiles(buckets: Buckets | None) -> dict[str, float | None]:
    return {name: _round(buckets.quantile(q) if buckets else None) for name, q in QUANTILES}


def _int(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------


def is_error(point: Point) -> bool:
    """A 5xx answer, or no answer at all because of an error (semantic conventions)."""
    status = point.attribute("http.response.status_code")
    try:
        if status is not None:
            return int(status) >= 500
    except (TypeError, ValueError):
        pass
    return point.attribute("error.type") is not None


@dataclass(frozen=True)
class Traffic:
    """Requests of one route (or all routes): latency buckets, count, errors."""

    buckets: Buckets | None
    total: int
    errors: int

    def minus(self, earlier: Traffic | None) -> Traffic:
        if earlier is None:
            return self
        buckets = self.buckets.minus(earlier.buckets) if self.buckets is not None else None
        return Traffic(buckets, max(0, self.total - earlier.total), max(0, self.errors - earlier.errors))

    def to_dict(self) -> dict[str, Any]:
        rate = self.errors / self.total if self.total else None
        return {
            "count": self.total,
            "errors": self.errors,
            "errorRate": _round(rate, 4),
            **quantiles(self.buckets),
        }


@dataclass(frozen=True)
class RequestTotals:
    """Cumulative request figures of the instance, overall and per route."""

    overall: Traffic
    routes: Mapping[tuple[str, str], Traffic] = field(default_factory=dict)

    def minus(self, earlier: RequestTotals | None) -> RequestTotals:
        if earlier is None:
            return self
        routes = {key: traffic.minus(earlier.routes.get(key)) for key, traffic in self.routes.items()}
        return RequestTotals(self.overall.minus(earlier.overall), routes)


def _traffic(points: list[Point]) -> Traffic:
    return Traffic(
        Buckets.of(points),
        sum(point.count for point in points),
        sum(point.count for point in points if is_error(point)),
    )


def request_totals(view: InstanceMetrics, metric: str = HTTP_DURATION) -> RequestTotals:
    points = list(view.points(metric))
    by_route: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        key = (str(point.attribute("http.request.method", "")), str(point.attribute("http.route", "")))
        by_route.setdefault(key, []).append(point)
    return RequestTotals(_traffic(points), {key: _traffic(group) for key, group in sorted(by_route.items())})


@dataclass(frozen=True)
class RequestWindow:
    """Requests over the recent window (``seconds`` long, or since the start)."""

    seconds: float | None
    totals: RequestTotals


class RequestHistory:
    """The instance's cumulative request figures at each evaluation, for windows.

    Keeps the entries inside the window; the oldest is the baseline, so a
    window spans at most ``window_s`` (one evaluation interval less, at
    worst). Not thread-safe: one owner, the monitor's loop.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._entries: deque[tuple[float, RequestTotals]] = deque()

    def add(self, now: float, totals: RequestTotals) -> None:
        self._entries.append((now, totals))
        start = now - self.window_s
        while len(self._entries) > 1 and self._entries[0][0] < start:
            self._entries.popleft()

    def window(self, now: float) -> RequestWindow | None:
        if not self._entries:
            return None
        latest_time, latest = self._entries[-1]
        if len(self._entries) == 1:
            return RequestWindow(None, latest)
        baseline_time, baseline = self._entries[0]
        return RequestWindow(latest_time - baseline_time, latest.minus(baseline))

    def clear(self) -> None:
        self._entries.clear()


def request_metrics(view: InstanceMetrics, window: RequestWindow | None) -> dict[str, Any]:
    """The seed's ``RequestMetrics``: totals since the start and the recent window."""
    totals = request_totals(view)
    recent = window.totals.overall.to_dict() if window is not None else None
    if recent is not None:
        recent["seconds"] = _round(window.seconds, 1) if window and window.seconds is not None else None
    active = sum(point.value for point in view.points("http.server.active_requests"))
    return {
        "total": totals.overall.total,
        "errors": totals.overall.errors,
        "errorRate": totals.overall.to_dict()["errorRate"],
        "active": _int(active),
        "timeouts": _int(sum(point.value for point in view.points("otel_render.http.request.timeouts"))),
        **quantiles(totals.overall.buckets),
        "recent": recent,
    }


def routes(view: InstanceMetrics, window: RequestWindow | None) -> list[dict[str, Any]]:
    """Per route (method and route template): counts, errors, error rate, p50/p95/p99."""
    totals = request_totals(view)
    recent_routes = window.totals.routes if window is not None else {}
    result = []
    for (method, route), traffic in totals.routes.items():
        entry = {"method": method, "route": route, **traffic.to_dict()}
        recent = recent_routes.get((method, route))
        entry["recent"] = recent.to_dict() if recent is not None else None
        result.append(entry)
    result.sort(key=lambda item: -item["count"])
    return result


# --------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------

_POOL = "db.client.connection.pool.name"


def _by_pool(points: Iterable[Point]) -> dict[str, list[Point]]:
    grouped: dict[str, list[Point]] = {}
    for point in points:
        grouped.setdefault(str(point.attribute(_POOL, "")), []).append(point)
    return grouped


def database_pool(view: InstanceMetrics) -> dict[str, Any]:
    """The seed's ``DatabasePoolMetrics``: connections per pool, summed over the processes."""
    pools: dict[str, dict[str, Any]] = {}

    def pool(name: str) -> dict[str, Any]:
        return pools.setdefault(name, {"name": name, "used": 0, "idle": 0, "max": 0, "pending": 0, "timeouts": 0})

    for name, points in _by_pool(view.points("db.client.connection.count")).items():
        for point in points:
            state = point.attribute("db.client.connection.state")
            if state in ("used", "idle"):
                pool(name)[state] += _int(point.value)
    for metric, key in (
        ("db.client.connection.max", "max"),
        ("db.client.connection.pending_requests", "pending"),
        ("db.client.connection.timeouts", "timeouts"),
    ):
        for name, points in _by_pool(view.points(metric)).items():
            pool(name)[key] += _int(sum(point.value for point in points))
    for name, points in _by_pool(view.points("db.client.connection.wait_time")).items():
        pool(name)["waitTime"] = quantiles(Buckets.of(points))
    for name, points in _by_pool(view.points("otel_render.db.status")).items():
        pool(name)["up"] = all(point.value >= 1 for point in points)
    for name, points in _by_pool(view.points("otel_render.db.circuit.state")).items():
        states = sorted({str(point.attribute("state")) for point in points if point.value >= 1})
        pool(name)["circuit"] = states[0] if len(states) == 1 else states
    listed = sorted(pools.values(), key=lambda item: item["name"])
    return {
        "used": sum(item["used"] for item in listed),
        "idle": sum(item["idle"] for item in listed),
        "max": sum(item["max"] for item in listed),
        "pending": sum(item["pending"] for item in listed),
        "timeouts": sum(item["timeouts"] for item in listed),
        "pools": listed,
    }


def database(view: InstanceMetrics) -> dict[str, Any]:
    """Pools, plus statement counts, errors and latency by operation."""
    operations: dict[tuple[str, str], list[Point]] = {}
    points = list(view.points("db.client.operation.duration"))
    for point in points:
        key = (str(point.attribute("db.system.name", "")), str(point.attribute("db.operation.name", "")))
        operations.setdefault(key, []).append(point)

    def stats(group: list[Point]) -> dict[str, Any]:
        errors = sum(point.count for point in group if point.attribute("error.type") is not None)
        return {"count": sum(point.count for point in group), "errors": errors, **quantiles(Buckets.of(group))}

    deadlines = [
        {
            "pool": str(point.attribute(_POOL, "")),
            "phase": str(point.attribute("phase", "")),
            "count": _int(point.value),
        }
        for point in view.points("otel_render.db.deadline.exceeded")
    ]
    return {
        "pool": database_pool(view),
        "queries": stats(points),
        "operations": [
            {"system": system, "operation": operation, **stats(group)}
            for (system, operation), group in sorted(operations.items())
        ],
        "deadlinesExceeded": deadlines,
    }


# --------------------------------------------------------------------------
# Schedulers and recovery
# --------------------------------------------------------------------------


def schedulers(view: InstanceMetrics) -> dict[str, Any]:
    """Jobs (runs by outcome, duration, last success) and each scheduler's state per process."""
    jobs: dict[tuple[str, str], dict[str, Any]] = {}

    def job(point: Point) -> dict[str, Any]:
        key = (str(point.attribute("scheduler.name", "")), str(point.attribute("job.id", "")))
        return jobs.setdefault(key, {"scheduler": key[0], "job": key[1], "runs": {}, "lastSuccess": None})

    for point in view.points("otel_render.scheduler.job.runs"):
        runs = job(point)["runs"]
        outcome = str(point.attribute("outcome", ""))
        runs[outcome] = runs.get(outcome, 0) + _int(point.value)
    durations: dict[tuple[str, str], list[Point]] = {}
    for point in view.points("otel_render.scheduler.job.duration"):
        entry = job(point)
        durations.setdefault((entry["scheduler"], entry["job"]), []).append(point)
    for key, group in durations.items():
        jobs[key]["duration"] = quantiles(Buckets.of(group))
    for point in view.points("otel_render.scheduler.job.last_success"):
        entry = job(point)
        if entry["lastSuccess"] is None or point.value > entry["lastSuccess"]:
            entry["lastSuccess"] = point.value
    states = [
        {
            "scheduler": str(point.attribute("scheduler.name", "")),
            "state": str(point.attribute("state", "")),
            "process": point.attribute(PROCESS_ID_KEY),
            "pid": point.attribute(PROCESS_PID_KEY),
        }
        for point in view.points("otel_render.scheduler.state")
        if point.value >= 1
    ]
    restarts: dict[str, dict[str, int | float]] = {}
    for point in view.points("otel_render.scheduler.restarts"):
        by_outcome = restarts.setdefault(str(point.attribute("scheduler.name", "")), {})
        outcome = str(point.attribute("outcome", ""))
        by_outcome[outcome] = by_outcome.get(outcome, 0) + _int(point.value)
    return {
        "jobs": [jobs[key] for key in sorted(jobs)],
        "states": sorted(states, key=lambda item: (item["scheduler"], str(item["process"]))),
        "restarts": restarts,
    }


def recovery(view: InstanceMetrics) -> dict[str, Any]:
    actions = [
        {
            "rule": str(point.attribute("rule", "")),
            "action": str(point.attribute("action", "")),
            "outcome": str(point.attribute("outcome", "")),
            "count": _int(point.value),
        }
        for point in view.points("otel_render.recovery.actions")
    ]
    freed = {
        str(point.attribute("action", "")): _int(point.value)
        for point in view.points("otel_render.recovery.memory.freed")
    }
    return {
        "actions": sorted(actions, key=lambda item: (item["rule"], item["action"], item["outcome"])),
        "memoryFreedBytes": freed,
    }


# --------------------------------------------------------------------------
# Processes and memory
# --------------------------------------------------------------------------


def _per_process(view: InstanceMetrics, metric: str) -> dict[int, list[Point]]:
    grouped: dict[int, list[Point]] = {}
    for point in view.points(metric):
        pid = point.attribute(PROCESS_PID_KEY)
        if isinstance(pid, int):
            grouped.setdefault(pid, []).append(point)
    return grouped


def processes(view: InstanceMetrics) -> list[dict[str, Any]]:
    """Each live process of the instance: memory, CPU, threads, GC."""

    def one(metric: str, pid: int) -> float | None:
        points = _per_process(view, metric).get(pid)
        return _int(sum(point.value for point in points)) if points else None

    result = []
    for snapshot in view.processes:
        pid = snapshot.process.pid
        cpu = {
            str(point.attribute("cpu.mode")): _round(point.value, 3)
            for point in _per_process(view, "process.cpu.time").get(pid, [])
        }
        gc_by_generation = {
            str(point.attribute("cpython.gc.generation")): _int(point.value)
            for point in _per_process(view, "cpython.gc.collections").get(pid, [])
        }
        result.append(
            {
                "instanceId": snapshot.process.label,
                "pid": pid,
                "role": snapshot.process.role,
                "slot": snapshot.process.slot,
                "started": snapshot.process.started,
                "collectedAt": snapshot.collected_at,
                "rss": one("process.memory.usage", pid),
                "uss": one("otel_render.process.memory.uss", pid),
                "virtual": one("process.memory.virtual", pid),
                "threads": one("process.thread.count", pid),
                "cpuSeconds": cpu,
                "gcCollections": gc_by_generation,
            }
        )
    return result


def _gauge(view: InstanceMetrics, metric: str) -> float | None:
    points = view.points(metric)
    return points[0].value if points else None


def _memory_source() -> str | None:
    meters = runtime.current()
    return meters.source if meters is not None else None


def memory_usage(view: InstanceMetrics) -> dict[str, Any]:
    """The seed's ``MemoryMetrics`` for the instance (mapping in ``docs/endpoints.md``)."""
    usage = _gauge(view, "otel_render.instance.memory.usage")
    limit = _gauge(view, "otel_render.instance.memory.limit")
    rss = [point.value for point in view.points("process.memory.usage")]
    uss = [point.value for point in view.points("otel_render.process.memory.uss")]
    gc_count = sum(point.value for point in view.points("cpython.gc.collections"))
    metrics = memory_metrics(
        instance_usage=int(usage) if usage is not None else None,
        limit=int(limit) if limit is not None else None,
        uss_total=int(sum(uss)) if uss else None,
        gc_count=int(gc_count),
        fallback_usage=int(sum(rss)) if rss else None,
        source=_memory_source(),
    )
    metrics["rss"] = int(sum(rss)) if rss else None
    metrics["uss"] = int(sum(uss)) if uss else None
    metrics["processes"] = len(view.processes)
    return metrics


def memory_utilization(view: InstanceMetrics) -> tuple[float | None, int | None, int | None]:
    """(usage / limit, usage, limit) of the instance; usage falls back to summed RSS without a cgroup."""
    metrics = memory_usage(view)
    used, limit = metrics["heapUsed"], metrics["heapTotal"]
    if used is None or not limit:
        return None, used, limit
    return used / limit, used, limit


def health_metrics(view: InstanceMetrics, window: RequestWindow | None) -> dict[str, Any]:
    """The ``metrics`` part of the seed's EnhancedHealthStatus."""
    return {
        "memoryUsage": memory_usage(view),
        "databasePool": database_pool(view),
        "requestMetrics": request_metrics(view, window),
    }


# --------------------------------------------------------------------------
# Telemetry pipeline and endpoints
# --------------------------------------------------------------------------


def _split_errors(view: InstanceMetrics, metric: str) -> tuple[int | float, dict[str, int | float]]:
    ok: float = 0
    failed: dict[str, float] = {}
    for point in view.points(metric):
        error = point.attribute("error.type")
        if error is None:
            ok += point.value
        else:
            failed[str(error)] = failed.get(str(error), 0) + point.value
    return _int(ok), {key: _int(value) for key, value in failed.items()}


def pipeline(view: InstanceMetrics) -> dict[str, Any]:
    """The telemetry pipeline itself, from the SDK's ``otel.sdk.*`` self-metrics."""
    spans_processed, spans_dropped = _split_errors(view, "otel.sdk.processor.span.processed")
    spans_exported, spans_failed = _split_errors(view, "otel.sdk.exporter.span.exported")
    points_exported, points_failed = _split_errors(view, "otel.sdk.exporter.metric_data_point.exported")
    logs_processed, logs_dropped = _split_errors(view, "otel.sdk.processor.log.processed")
    logs_exported, logs_failed = _split_errors(view, "otel.sdk.exporter.log.exported")
    durations = list(view.points("otel.sdk.exporter.operation.duration"))
    exports_failed: dict[str, int] = {}
    for point in durations:
        error = point.attribute("error.type")
        if error is not None:
            exports_failed[str(error)] = exports_failed.get(str(error), 0) + point.count
    return {
        "spans": {
            "processed": spans_processed,
            "dropped": spans_dropped,
            "exported": spans_exported,
            "exportFailed": spans_failed,
            "queueSize": _int(sum(point.value for point in view.points("otel.sdk.processor.span.queue.size"))),
            "queueCapacity": _int(sum(point.value for point in view.points("otel.sdk.processor.span.queue.capacity"))),
        },
        "metricPoints": {"exported": points_exported, "exportFailed": points_failed},
        "logs": {
            "processed": logs_processed,
            "dropped": logs_dropped,
            "exported": logs_exported,
            "exportFailed": logs_failed,
        },
        "exports": {
            "count": sum(point.count for point in durations),
            "failed": exports_failed,
            **quantiles(Buckets.of(durations)),
        },
        "localCollection": quantiles(Buckets.of(view.points("otel.sdk.metric_reader.collection.duration"))),
    }


def endpoints(view: InstanceMetrics) -> dict[str, Any]:
    requests: dict[str, dict[str, int | float]] = {}
    for point in view.points("otel_render.endpoint.requests"):
        by_status = requests.setdefault(str(point.attribute("http.route", "")), {})
        status = str(point.attribute("http.response.status_code", ""))
        by_status[status] = by_status.get(status, 0) + _int(point.value)
    failures = {
        str(point.attribute("http.route", "")): _int(point.value)
        for point in view.points("otel_render.endpoint.auth_failures")
    }
    return {"requests": requests, "authFailures": failures}


# --------------------------------------------------------------------------
# Everything, by name
# --------------------------------------------------------------------------


def all_metrics(view: InstanceMetrics) -> list[dict[str, Any]]:
    """Every merged series, sorted by name: values, or count/sum/min/max/p50/p95/p99 for histograms.

    A list rather than a mapping by name, so that the scrubber (which masks
    values under sensitive *keys*) never hides a metric whose name contains
    a word such as ``session`` or ``token``.
    """
    result: list[dict[str, Any]] = []
    for name in view.names():
        series = view.series[name]
        points = []
        for point in series.points:
            entry: dict[str, Any] = {"attributes": point.attrs}
            if series.kind == HISTOGRAM:
                buckets = Buckets(point.bounds, point.bucket_counts, point.count, point.sum, point.min, point.max)
                entry.update(
                    count=point.count, sum=_round(point.sum), min=point.min, max=point.max, **quantiles(buckets)
                )
            else:
                entry["value"] = _int(point.value)
            points.append(entry)
        result.append(
            {"name": name, "kind": series.kind, "unit": series.unit, "monotonic": series.monotonic, "points": points}
        )
    return result
