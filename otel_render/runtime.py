"""Process and instance meters: memory, CPU, threads and garbage collection of
this process, and the instance's memory against its limit.

The names are the semantic conventions' (``process.*``, ``cpython.gc.*``)
plus the package's own for what has no convention (USS, the instance's cgroup
memory); ``docs/metrics.md`` lists them. Every instrument is observable: the
values are read when a reader collects (the OTLP reader every export
interval, the local reader every ``OTEL_RENDER_HEALTH_INTERVAL_S``), never on
the request path.

Instance memory is the cgroup's usage without its inactive file cache, the
number the platform's out-of-memory killer compares with the limit (see
:mod:`otel_render.platform`); summing the workers' RSS would count the pages
they share with the ``--preload`` master several times. Where there is no
memory cgroup (a laptop), the instance gauges carry the limit only.

After ``fork`` a gunicorn worker reads its own process (psutil's handle is
re-created) and counts garbage collections from the fork on: the interpreter
state it inherits carries the master's collection counts, which the master
reports itself.

:func:`memory_state` feeds the ``system`` part of error contexts (the seed's
``memoryUsage``) from the last values read, so capturing an error reads no
file.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from otel_render import diagnostics, instance
from otel_render.config import Settings
from otel_render.platform import (
    MEMORY_SOURCE_CGROUP,
    MIB,
    HostFS,
    MemoryLimit,
    instance_memory_in_use,
    memory_limit,
    memory_source,
    process_tree_memory,
)
from otel_render.version import __version__

_logger = logging.getLogger("otel_render.runtime")

SCOPE = "otel_render.runtime"


@dataclass
class _Readings:
    """The last values read, for error contexts and the local endpoints."""

    rss: int | None = None
    uss: int | None = None
    instance_usage: int | None = None
    limit: MemoryLimit | None = None
    gc_collections: int = 0


class RuntimeMeters:
    """The callbacks of the observable instruments, and the last values they read."""

    def __init__(self, settings: Settings, fs: HostFS | None = None) -> None:
        self.settings = settings
        self.fs = fs or HostFS()
        self._process: psutil.Process | None = None
        self._process_pid = 0
        self._gc_baseline: list[dict[str, int]] = []
        self._readings = _Readings()
        self.source = memory_source(settings.environ, settings.memory_source, self.fs)

    def instance_usage(self) -> int | None:
        """The instance's memory in use, from the cgroup or the app's process tree."""
        if self.source == MEMORY_SOURCE_CGROUP:
            return instance_memory_in_use(self.fs)
        return process_tree_memory(instance.owner_pid())

    # -- what is read ------------------------------------------------------------

    def process(self) -> psutil.Process:
        """psutil's handle on *this* process (a new one after fork)."""
        pid = os.getpid()
        if self._process is None or self._process_pid != pid:
            self._process = psutil.Process(pid)
            self._process_pid = pid
        return self._process

    def limit(self) -> MemoryLimit:
        """The instance's memory limit, detected once per process."""
        if self._readings.limit is None:
            self._readings.limit = memory_limit(self.settings.environ, self.settings.memory_limit_mb, self.fs)
        return self._readings.limit

    def gc_stats(self) -> list[dict[str, int]]:
        """Collections and collected objects per generation since this process started (or forked)."""
        stats = gc.get_stats()
        baseline = self._gc_baseline
        result = []
        for generation, entry in enumerate(stats):
            before = baseline[generation] if generation < len(baseline) else {}
            result.append(
                {
                    "collections": max(0, entry.get("collections", 0) - before.get("collections", 0)),
                    "collected": max(0, entry.get("collected", 0) - before.get("collected", 0)),
                }
            )
        self._readings.gc_collections = sum(entry["collections"] for entry in result)
        return result

    def reset_after_fork(self) -> None:
        """In a forked child: a new psutil handle, GC counts from now, no stale readings."""
        self._process = None
        self._gc_baseline = [dict(entry) for entry in gc.get_stats()]
        limit = self._readings.limit
        self._readings = _Readings(limit=limit)

    # -- callbacks ---------------------------------------------------------------

    def observe_rss(self, _options: CallbackOptions) -> Iterable[Observation]:
        info = self.process().memory_info()
        self._readings.rss = info.rss
        return [Observation(info.rss)]

    def observe_virtual(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.process().memory_info().vms)]

    def observe_uss(self, _options: CallbackOptions) -> Iterable[Observation]:
        try:
            uss = self.process().memory_full_info().uss
        except (psutil.AccessDenied, AttributeError, OSError):
            return []
        self._readings.uss = uss
        return [Observation(uss)]

    def observe_cpu(self, _options: CallbackOptions) -> Iterable[Observation]:
        times = self.process().cpu_times()
        return [Observation(times.user, {"cpu.mode": "user"}), Observation(times.system, {"cpu.mode": "system"})]

    def observe_threads(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.process().num_threads())]

    def observe_gc_collections(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(entry["collections"], {"cpython.gc.generation": generation})
            for generation, entry in enumerate(self.gc_stats())
        ]

    def observe_gc_collected(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(entry["collected"], {"cpython.gc.generation": generation})
            for generation, entry in enumerate(self.gc_stats())
        ]

    def observe_instance_usage(self, _options: CallbackOptions) -> Iterable[Observation]:
        usage = self.instance_usage()
        self._readings.instance_usage = usage
        return [] if usage is None else [Observation(usage)]

    def observe_instance_limit(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.limit().bytes)]

    def observe_instance_utilization(self, _options: CallbackOptions) -> Iterable[Observation]:
        usage = self._readings.instance_usage
        if usage is None:
            usage = self.instance_usage()
        limit = self.limit().bytes
        return [] if usage is None or limit <= 0 else [Observation(usage / limit)]

    # -- error contexts ----------------------------------------------------------

    def memory_state(self) -> Mapping[str, Any]:
        """The seed's ``memoryUsage`` for an error context, from the last readings:
        the instance's usage and limit, and this process's RSS, USS and GC count.

        Only this process's RSS is read now (one small ``/proc`` read); the
        rest comes from the last collection.
        """
        readings = self._readings
        try:
            rss = self.process().memory_info().rss
        except (psutil.Error, OSError):
            rss = readings.rss
        limit = self.limit().bytes
        used = readings.instance_usage
        return {
            # external needs every process's USS: unknown from one process.
            "memoryUsage": memory_metrics(
                instance_usage=used,
                limit=limit,
                uss_total=None,
                gc_count=readings.gc_collections,
                fallback_usage=rss,
                source=self.source,
            )
            | {"rss": rss, "uss": readings.uss, "pid": os.getpid()}
        }


def memory_metrics(
    *,
    instance_usage: int | None,
    limit: int | None,
    uss_total: int | None,
    gc_count: int,
    fallback_usage: int | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The seed's ``MemoryMetrics`` in Python terms (see ``docs/endpoints.md``).

    - ``heapUsed``: the instance's memory in use (cgroup usage without inactive
      file cache, or the app's process tree by PSS: ``OTEL_RENDER_MEMORY_SOURCE``),
      the number the limit applies to; failing both, the ``fallback_usage``
      (RSS summed over the instance's processes);
    - ``heapTotal``: the instance's memory limit;
    - ``external``: what of ``heapUsed`` is not unique to any Python process
      (``heapUsed`` minus their summed USS): pages shared with the
      ``--preload`` master, active page cache, other processes in the container;
    - ``usagePercent``: ``heapUsed`` / ``heapTotal`` x 100;
    - ``gcCount``: garbage collections (all generations) in the live processes.
    """
    used = instance_usage if instance_usage is not None else fallback_usage
    external = max(0, used - uss_total) if used is not None and uss_total is not None else None
    percent = round(used / limit * 100, 2) if used is not None and limit else None
    return {
        "heapUsed": used,
        "heapTotal": limit,
        "external": external,
        "usagePercent": percent,
        "gcCount": gc_count,
        "source": (source or "cgroup") if instance_usage is not None else "process rss (no instance measurement)",
    }


_meters: RuntimeMeters | None = None
_install_lock = threading.Lock()


def current() -> RuntimeMeters | None:
    """The runtime meters this process installed, if any."""
    return _meters


def create_instruments(meter_provider: MeterProvider, meters: RuntimeMeters) -> None:
    """The process and instance instruments of ``docs/metrics.md``, read by ``meters``."""
    meter = meter_provider.get_meter(SCOPE, __version__)
    meter.create_observable_up_down_counter(
        "process.memory.usage", [meters.observe_rss], unit="By", description="Resident set size of the process."
    )
    meter.create_observable_up_down_counter(
        "process.memory.virtual", [meters.observe_virtual], unit="By", description="Virtual memory of the process."
    )
    meter.create_observable_counter(
        "process.cpu.time", [meters.observe_cpu], unit="s", description="CPU time of the process, user or system."
    )
    meter.create_observable_up_down_counter(
        "process.thread.count", [meters.observe_threads], unit="{thread}", description="Threads of the process."
    )
    meter.create_observable_counter(
        "cpython.gc.collections",
        [meters.observe_gc_collections],
        unit="{collection}",
        description="Garbage collections per generation.",
    )
    meter.create_observable_counter(
        "cpython.gc.collected_objects",
        [meters.observe_gc_collected],
        unit="{object}",
        description="Objects collected per generation.",
    )
    meter.create_observable_gauge(
        "otel_render.process.memory.uss",
        [meters.observe_uss],
        unit="By",
        description="Memory unique to the process (what it would free on exit).",
    )
    meter.create_observable_gauge(
        "otel_render.instance.memory.usage",
        [meters.observe_instance_usage],
        unit="By",
        description="The instance's memory in use: cgroup usage minus inactive file cache.",
    )
    meter.create_observable_gauge(
        "otel_render.instance.memory.limit",
        [meters.observe_instance_limit],
        unit="By",
        description="The instance's memory limit.",
    )
    meter.create_observable_gauge(
        "otel_render.instance.memory.utilization",
        [meters.observe_instance_utilization],
        unit="1",
        description="The instance's memory usage divided by its limit.",
    )


def install(meter_provider: MeterProvider, settings: Settings, fs: HostFS | None = None) -> RuntimeMeters:
    """Create the process and instance instruments on ``meter_provider`` (once per process tree)
    and contribute ``memoryUsage`` to error contexts."""
    global _meters
    with _install_lock:
        if _meters is not None:
            return _meters
        meters = RuntimeMeters(settings, fs)
        create_instruments(meter_provider, meters)
        diagnostics.add_system_state("memory", meters.memory_state)
        _meters = meters
        limit = meters.limit()
        _logger.debug("otel-render: instance memory limit %.0f MiB (%s)", limit.bytes / MIB, limit.source)
        return meters


def reset_after_fork() -> None:
    if _meters is not None:
        _meters.reset_after_fork()
