"""The per-process loop behind the local endpoints.

Every ``OTEL_RENDER_HEALTH_INTERVAL_S`` each process of the instance (the
gunicorn master and every worker, each after its own fork):

1. collects its own metrics through the local reader (the same meters the
   OTLP export reads);
2. reads the other processes' latest snapshots and merges the instance's
   view (:mod:`otel_render.local.store`);
3. runs the registered health checks, each with a timeout
   (:class:`~otel_render.health.CheckRunner`);
4. publishes its snapshot (metrics and check results) and, when they
   changed, its diagnostics records; folds the files of exited processes;
5. caches the instance's :class:`~otel_render.health.EnhancedHealthStatus`.

``/health`` and ``/api/health`` answer from that cache (no query, no file, no
lock). ``/api/metrics`` and ``/api/diagnostics`` collect this process afresh and
read the others' latest files.

The built-in ``memory`` and ``performance`` checks are registered here: they
read the view the loop has just merged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from otel_render import diagnostics, health, instance
from otel_render.config import Settings
from otel_render.health import (
    CheckRunner,
    EnhancedHealthStatus,
    HealthCheckResult,
    MemoryCheck,
    build_status,
    liveness_names,
    merge_process_checks,
    performance_result,
)
from otel_render.local import summary
from otel_render.local.reader import LocalMetricReader
from otel_render.local.snapshot import (
    InstanceMetrics,
    ProcessInfo,
    ProcessSnapshot,
    merge_instance,
    series_from_metrics_data,
)
from otel_render.local.store import InstanceStore
from otel_render.platform import detect_platform
from otel_render.web import gunicorn

_logger = logging.getLogger("otel_render.local")

IdentitySource = Callable[[], ProcessInfo]


def current_process_info(instance_id: Callable[[], str | None] = lambda: None) -> ProcessInfo:
    """This process, as the snapshot files name it."""
    pid = os.getpid()
    role, slot = gunicorn.identity()
    return ProcessInfo(pid, instance.start_time(pid), instance_id(), role, slot)


def store_for_this_process(settings: Settings) -> tuple[InstanceStore, bool]:
    """This instance run's store, and whether this process owns it (the
    gunicorn master, or the process itself outside gunicorn)."""
    return InstanceStore(instance.directory(settings)), instance.owner_pid() == os.getpid()


class InstanceMonitor:
    """The loop's state in one process; :meth:`tick` is the loop's body."""

    def __init__(
        self,
        reader: LocalMetricReader,
        settings: Settings,
        *,
        process_info: IdentitySource = current_process_info,
        store_factory: Callable[[Settings], tuple[InstanceStore, bool]] = store_for_this_process,
        checks: Callable[[], Mapping[str, health.Check]] = health.registered_checks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.settings = settings
        self._process_info = process_info
        self._store_factory = store_factory
        self._checks = checks
        self._clock = clock
        self.liveness = liveness_names(settings.liveness_checks)
        self.platform = detect_platform(settings.environ)
        self.history = summary.RequestHistory(settings.health_window_s)
        self.runner = CheckRunner(settings.health_check_timeout_s)
        self.memory_check = MemoryCheck(
            self._memory_utilization,
            warn_percent=settings.memory_warn_percent,
            critical_percent=settings.memory_critical_percent,
            grace_s=settings.memory_critical_grace_s,
        )
        self._tick_lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        self._store: InstanceStore | None = None
        self._owner = False
        self._store_unusable = False
        self._store_warned = False
        self._view: InstanceMetrics | None = None
        self._status: EnhancedHealthStatus | None = None
        self._own_checks: dict[str, HealthCheckResult] = {}
        self._published_rings: tuple[int, int, int] | None = None
        self._cleaned_up = False

    # -- the built-in checks -----------------------------------------------------

    def register_builtin_checks(self) -> None:
        health.register_check("memory", self.memory_check)
        health.register_check("performance", self.performance_check)

    def _memory_utilization(self) -> tuple[float | None, int | None, int | None]:
        view = self._view
        if view is None:
            return None, None, None
        return summary.memory_utilization(view)

    def performance_check(self, now: float) -> HealthCheckResult:
        window = self.history.window(now)
        overall = window.totals.overall if window is not None else None
        return performance_result(
            total=overall.total if overall else 0,
            errors=overall.errors if overall else 0,
            p95_s=overall.buckets.quantile(0.95) if overall and overall.buckets else None,
            window_s=window.seconds if window is not None else None,
            now=now,
            p95_limit_s=self.settings.health_p95_s,
            error_rate_limit=self.settings.health_error_rate,
            min_requests=summary.MIN_REQUESTS_FOR_RATE,
        )

    # -- store ---------------------------------------------------------------------

    def store(self) -> InstanceStore | None:
        """This process's store, or None when there can be none (logged once)."""
        if self._store is None and not self._store_unusable:
            try:
                self._store, self._owner = self._store_factory(self.settings)
            except Exception:  # pylint: disable=broad-except
                self._store_unusable = True
                _logger.warning(
                    "otel-render: no instance directory; the endpoints show this process only", exc_info=True
                )
        return self._store

    def _store_call(self, action: Callable[[InstanceStore], Any], default: Any = None) -> Any:
        """Run ``action`` on the store; a failure is logged once, and the next
        call tries again (a full tmpfs empties, a deleted directory is made again)."""
        store = self.store()
        if store is None:
            return default
        try:
            return action(store)
        except Exception:  # pylint: disable=broad-except
            if not self._store_warned:
                self._store_warned = True
                _logger.warning(
                    "otel-render: the instance directory %s is not usable now; the endpoints show this process "
                    "only until it is",
                    store.directory,
                    exc_info=True,
                )
            return default

    # -- snapshots -------------------------------------------------------------------

    def process(self) -> ProcessInfo:
        """This process, as its snapshot names it."""
        return self._process_info()

    def own_snapshot(self) -> ProcessSnapshot:
        """This process's metrics, collected now, with its last check results."""
        collected = self.reader.refresh()
        return ProcessSnapshot(
            self._process_info(),
            collected.collected_at or self._clock(),
            series_from_metrics_data(collected.data),
            {name: result.to_dict() for name, result in self._own_checks.items()},
        )

    def _read(self, own: ProcessSnapshot) -> InstanceMetrics:
        return self._store_call(lambda store: store.read(own), merge_instance([own]))

    def fresh_view(self) -> InstanceMetrics:
        """The instance with this process collected now (for ``/api/metrics``)."""
        return self._read(self.own_snapshot())

    def latest_view(self) -> InstanceMetrics | None:
        return self._view

    def status(self) -> EnhancedHealthStatus | None:
        """The cached instance health (None before the first evaluation)."""
        return self._status

    def window(self) -> summary.RequestWindow | None:
        return self.history.window(self._clock())

    # -- the loop ------------------------------------------------------------------------

    def tick(self) -> None:
        """Collect, merge, check, publish, cache (see the module docstring)."""
        if not self._tick_lock.acquire(blocking=False):
            return  # an evaluation is already running (a slow store): skip this one
        try:
            self._tick()
        finally:
            self._tick_lock.release()

    def _tick(self) -> None:
        now = self._clock()
        own = self.own_snapshot()
        view = self._read(own)
        self._view = view
        self.history.add(now, summary.request_totals(view))

        results = self.runner.run(self._checks(), now)
        self._own_checks = results
        own = replace(own, checks={name: result.to_dict() for name, result in results.items()})
        self._publish(own)

        reports: list[tuple[str, Mapping[str, HealthCheckResult]]] = [(own.process.label, results)]
        for snapshot in view.processes:
            if snapshot.process.key == own.process.key:
                continue
            reports.append(
                (
                    snapshot.process.label,
                    {name: HealthCheckResult.from_dict(raw) for name, raw in snapshot.checks.items()},
                )
            )
        started = min((snapshot.process.started for snapshot in view.processes), default=own.process.started)
        self._status = build_status(
            checks=merge_process_checks(reports),
            liveness=self.liveness,
            now=now,
            started=started,
            platform=self.platform,
            metrics=summary.health_metrics(view, self.history.window(now)),
        )

    def _publish(self, own: ProcessSnapshot) -> None:
        self._store_call(lambda store: store.publish(own))
        rings = (diagnostics.errors.total, diagnostics.stalls.total, diagnostics.actions.total)
        if rings != self._published_rings:
            self._store_call(lambda store: store.publish_diagnostics(own.process, own_diagnostics()))
            self._published_rings = rings
        self._store_call(lambda store: store.retire_exited())
        if self._owner and not self._cleaned_up:
            self._cleaned_up = True
            self._store_call(lambda store: InstanceStore.remove_abandoned(store.directory.parent, store.directory))

    # -- diagnostics -------------------------------------------------------------------------

    def instance_diagnostics(self) -> dict[str, list[Any]]:
        """The diagnostics records of every process of the instance, newest first."""
        own = self._process_info()
        rings = own_diagnostics(label=own.label)
        others = self._store_call(lambda store: store.read_diagnostics(own), {}) or {}
        for name, records in others.items():
            rings.setdefault(name, []).extend(records)
        return {
            name: sorted(records, key=lambda record: str(record.get("timestamp", "")), reverse=True)
            for name, records in rings.items()
        }

    # -- process lifecycle ---------------------------------------------------------------------

    def on_exit(self, _deadline: float) -> None:
        """Publish one last snapshot (a recycled worker's counts stay in the
        totals); the owner of the directory removes it instead."""
        try:
            if self.store() is None:
                return
            if self._owner:
                self._store_call(lambda store: store.remove_directory())
                return
            own = self.own_snapshot()
            self._store_call(lambda store: store.publish(own))
            self._store_call(lambda store: store.publish_diagnostics(own.process, own_diagnostics()))
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: final snapshot failed", exc_info=True)

    def reset_after_fork(self) -> None:
        """A forked child starts its own loop state; it keeps the parent's
        cached status until its first evaluation (better than none)."""
        status = self._status
        self._tick_lock = threading.Lock()
        self.runner.reset_after_fork()
        self.history.clear()
        self._reset_state()
        self._status = status


def own_diagnostics(label: str | None = None) -> dict[str, list[Any]]:
    """This process's diagnostics rings as plain records (oldest first)."""
    rings = {
        "errors": [record.to_dict() for record in diagnostics.errors.snapshot()],
        "stalls": [record.to_dict() for record in diagnostics.stalls.snapshot()],
        "actions": [record.to_dict() for record in diagnostics.actions.snapshot()],
    }
    if label:
        for records in rings.values():
            for record in records:
                record.setdefault("process", label)
    return rings
