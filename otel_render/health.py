"""The health model (the seed's EnhancedHealthStatus) and the registry of
component checks that feed it.

A component (database, schedulers, memory, performance) registers a check: a
function of the current time returning a :class:`HealthCheckResult`. Checks run
in the background on an interval, each in its own thread with a timeout
(:class:`CheckRunner`), and their results are cached, so serving a health
request never runs a query or waits on a slow check (see
:mod:`otel_render.local.monitor` and :mod:`otel_render.endpoints`).
``status`` is one of ``healthy``, ``degraded``, ``unhealthy``.

Liveness, the rule behind ``/health``'s 503: the instance is ``unhealthy``
only when a check named in ``OTEL_RENDER_LIVENESS_CHECKS`` (default
``memory,schedulers``) is; any other check's ``unhealthy`` makes it
``degraded``. A database outage degrades the instance but does not fail
``/health``: restarting every instance cannot fix the database, and Render
would otherwise pull them all out of routing. Each process of the instance
runs its checks and publishes their results; the instance takes the worst
report of each check from its live processes, so a worker being recycled
(gone from the list) does not fail it.

The built-in checks are pure functions fed with the merged metrics
(:func:`memory_result`, :func:`performance_result`) and an injected clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from otel_render.diagnostics import utc_now_iso
from otel_render.scrub import default as scrubber

_logger = logging.getLogger("otel_render.health")

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_ORDER = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}

#: The components the seed's model always lists.
COMPONENTS = ("database", "memory", "schedulers", "performance")
MAX_OUTPUT_CHARS = 500


@dataclass(frozen=True)
class HealthCheckResult:
    """One component's state, in the IETF health-check draft's terms."""

    status: str
    observedValue: Any = None  # noqa: N815 - the draft's field names
    observedUnit: str | None = None  # noqa: N815
    time: str | None = None
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCheckResult:
        status = data.get("status")
        return cls(
            status=status if status in _ORDER else DEGRADED,
            observedValue=data.get("observedValue"),
            observedUnit=data.get("observedUnit"),
            time=data.get("time"),
            output=str(data.get("output") or ""),
        )


def worst(statuses: Iterable[str]) -> str:
    """The worst of several statuses (healthy when there are none)."""
    return max(statuses, key=_ORDER.__getitem__, default=HEALTHY)


Check = Callable[[float], HealthCheckResult]
#: A finding about a component from outside its own check (None: nothing to add).
Finding = Callable[[float], "HealthCheckResult | None"]

_checks: dict[str, Check] = {}
_findings: dict[str, dict[str, Finding]] = {}
_lock = threading.Lock()


def register_check(name: str, check: Check) -> None:
    """Register (or replace) the check for component ``name``."""
    with _lock:
        _checks[name] = check


def unregister_check(name: str) -> None:
    with _lock:
        _checks.pop(name, None)


def add_finding(component: str, source: str, finding: Finding) -> None:
    """Let ``source`` add to ``component``'s check: a recovery rule that
    suspects a leak or gave up makes ``memory`` degraded or unhealthy without
    replacing the check that measures memory. The component's result is the
    worst status of its check and its findings, with their outputs joined."""
    with _lock:
        _findings.setdefault(component, {})[source] = finding


def with_findings(check: Check, findings: Mapping[str, Finding]) -> Check:
    """``check`` followed by ``findings`` (a finding that raises is skipped)."""

    def combined(now: float) -> HealthCheckResult:
        result = check(now)
        extra = []
        for finding in findings.values():
            try:
                found = finding(now)
            except Exception:  # pylint: disable=broad-except
                continue
            if found is not None:
                extra.append(found)
        if not extra:
            return result
        outputs = [result.output, *(found.output for found in extra)]
        return HealthCheckResult(
            worst([result.status, *(found.status for found in extra)]),
            result.observedValue,
            result.observedUnit,
            result.time,
            "; ".join(output for output in outputs if output),
        )

    return combined


def registered_checks() -> dict[str, Check]:
    """Every component's check, with the findings others added to it."""
    with _lock:
        checks = dict(_checks)
        findings = {name: dict(items) for name, items in _findings.items() if items}
    return {name: with_findings(check, findings[name]) if name in findings else check for name, check in checks.items()}


def reset_after_fork() -> None:
    """The registry's lock may have been held by the parent's health loop at fork."""
    global _lock
    _lock = threading.Lock()


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EnhancedHealthStatus:
    """The seed's EnhancedHealthStatus for the whole instance."""

    status: str
    timestamp: str
    uptime: float  # seconds since the instance's oldest live process started
    platform: str  # render | local | other
    checks: Mapping[str, HealthCheckResult]
    metrics: Mapping[str, Any] = field(default_factory=dict)  # memoryUsage, databasePool, requestMetrics

    def to_dict(self, *, details: bool) -> dict[str, Any]:
        """The full model, or (``details=False``) the statuses only."""
        if not details:
            return {
                "status": self.status,
                "timestamp": self.timestamp,
                "checks": {name: {"status": result.status} for name, result in self.checks.items()},
            }
        return {
            "status": self.status,
            "timestamp": self.timestamp,
            "uptime": round(self.uptime, 3),
            "platform": self.platform,
            "checks": {name: result.to_dict() for name, result in self.checks.items()},
            "metrics": dict(self.metrics),
        }


def not_checked(name: str, now: float) -> HealthCheckResult:
    """What the model shows for a seed component nothing checks in this instance."""
    return HealthCheckResult(HEALTHY, time=utc_now_iso(now), output=f"not checked: no {name} check is registered")


def effective_status(name: str, status: str, liveness: frozenset[str]) -> str:
    """A check's weight in the instance status: ``unhealthy`` counts only for liveness checks."""
    if status == UNHEALTHY and name not in liveness:
        return DEGRADED
    return status


def instance_status(checks: Mapping[str, HealthCheckResult], liveness: frozenset[str]) -> str:
    return worst(effective_status(name, result.status, liveness) for name, result in checks.items())


def liveness_names(configured: Iterable[str]) -> frozenset[str]:
    """``OTEL_RENDER_LIVENESS_CHECKS`` as a set (``none`` empties it)."""
    names = frozenset(name.strip().lower() for name in configured if name.strip())
    return frozenset() if "none" in names else names


def merge_process_checks(
    reports: Iterable[tuple[str, Mapping[str, HealthCheckResult]]],
) -> dict[str, HealthCheckResult]:
    """Each check's worst result over the processes that report it.

    When several processes report a check and the worst is not healthy, its
    output names the process it came from.
    """
    by_name: dict[str, list[tuple[str, HealthCheckResult]]] = {}
    for label, results in reports:
        for name, result in results.items():
            by_name.setdefault(name, []).append((label, result))
    merged = {}
    for name, entries in by_name.items():
        label, result = max(entries, key=lambda entry: _ORDER.get(entry[1].status, 1))
        if len(entries) > 1 and result.status != HEALTHY:
            result = replace(result, output=f"{label}: {result.output}")
        merged[name] = result
    return merged


def build_status(
    *,
    checks: Mapping[str, HealthCheckResult],
    liveness: frozenset[str],
    now: float,
    started: float,
    platform: str,
    metrics: Mapping[str, Any],
) -> EnhancedHealthStatus:
    """The instance's model: the seed's four components first, then any other check."""
    ordered: dict[str, HealthCheckResult] = {}
    for name in COMPONENTS:
        ordered[name] = checks.get(name) or not_checked(name, now)
    for name in sorted(checks):
        if name not in ordered:
            ordered[name] = checks[name]
    return EnhancedHealthStatus(
        status=instance_status(ordered, liveness),
        timestamp=utc_now_iso(now),
        uptime=max(0.0, now - started),
        platform=platform,
        checks=ordered,
        metrics=metrics,
    )


# --------------------------------------------------------------------------
# Built-in checks: memory and performance
# --------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value / (1024 * 1024):.0f} MiB"


def memory_result(
    *,
    utilization: float | None,
    used: int | None,
    limit: int | None,
    now: float,
    critical_since: float | None,
    warn_percent: float,
    critical_percent: float,
    grace_s: float,
) -> tuple[HealthCheckResult, float | None]:
    """Instance memory against its limit; returns the result and when memory
    turned critical (None when it is not).

    Below ``warn_percent``: healthy. From ``warn_percent``: degraded (recovery
    starts acting). From ``critical_percent``: degraded while recovery has
    ``grace_s`` to bring it back, then unhealthy.
    """
    stamp = utc_now_iso(now)
    if utilization is None:
        return HealthCheckResult(HEALTHY, None, "percent", stamp, "instance memory in use is unknown"), None
    percent = utilization * 100
    shown = f"instance memory at {percent:.1f}% of its {_mib(limit)} limit ({_mib(used)} in use)"
    observed = round(percent, 2)
    if percent >= critical_percent:
        since = critical_since if critical_since is not None else now
        critical_for = now - since
        if critical_for >= grace_s:
            output = (
                f"{shown}, critical (>= {critical_percent:g}%) for {critical_for:.0f} s: "
                "recovery has not brought it back"
            )
            return HealthCheckResult(UNHEALTHY, observed, "percent", stamp, output), since
        output = (
            f"{shown}, critical (>= {critical_percent:g}%) for {critical_for:.0f} s; "
            f"unhealthy if it stays there {grace_s - critical_for:.0f} s more"
        )
        return HealthCheckResult(DEGRADED, observed, "percent", stamp, output), since
    if percent >= warn_percent:
        return HealthCheckResult(DEGRADED, observed, "percent", stamp, f"{shown}, above {warn_percent:g}%"), None
    return HealthCheckResult(HEALTHY, observed, "percent", stamp, shown), None


def performance_result(
    *,
    total: int,
    errors: int,
    p95_s: float | None,
    window_s: float | None,
    now: float,
    p95_limit_s: float,
    error_rate_limit: float,
    min_requests: int,
) -> HealthCheckResult:
    """p95 latency and error rate of the instance's requests over the recent window.

    Degraded when p95 is above ``p95_limit_s`` or the error rate above
    ``error_rate_limit``; unhealthy when the error rate reaches twice the
    limit. The rate needs ``min_requests`` requests in the window.
    """
    stamp = utc_now_iso(now)
    over = f"in the last {window_s:.3g} s" if window_s is not None else "since the start"
    if total <= 0:
        return HealthCheckResult(HEALTHY, None, "s", stamp, f"no requests {over}")
    rate = errors / total
    status = HEALTHY
    reasons = []
    if total >= min_requests and rate > error_rate_limit:
        status = UNHEALTHY if error_rate_limit > 0 and rate >= 2 * error_rate_limit else DEGRADED
        reasons.append(f"error rate above {error_rate_limit:.1%}")
    if p95_s is not None and p95_s > p95_limit_s:
        status = worst([status, DEGRADED])
        reasons.append(f"p95 above {p95_limit_s:g} s")
    p95_text = "?" if p95_s is None else f"{p95_s:.3f} s"
    output = f"p95 {p95_text}, {rate:.1%} errors of {total} requests {over}"
    if reasons:
        output += ": " + ", ".join(reasons)
    return HealthCheckResult(status, None if p95_s is None else round(p95_s, 6), "s", stamp, output)


# --------------------------------------------------------------------------
# Running checks without ever waiting on them for long
# --------------------------------------------------------------------------


def _clean(result: Any, now: float) -> HealthCheckResult:
    """A check's answer made safe to show: a real result, scrubbed, bounded, stamped."""
    if not isinstance(result, HealthCheckResult):
        return HealthCheckResult(DEGRADED, time=utc_now_iso(now), output=f"the check returned {type(result).__name__}")
    status = result.status if result.status in _ORDER else DEGRADED
    output = scrubber.text(str(result.output or ""))[:MAX_OUTPUT_CHARS]
    observed = scrubber.text(result.observedValue) if isinstance(result.observedValue, str) else result.observedValue
    return replace(result, status=status, output=output, observedValue=observed, time=result.time or utc_now_iso(now))


class CheckRunner:
    """Runs each check in its own daemon thread and waits for it at most
    ``timeout_s``. A check still running by then is reported degraded, and is
    not started again until it returns (a hung check costs one thread)."""

    def __init__(self, timeout_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._running: dict[str, tuple[threading.Thread, float]] = {}
        self._results: dict[str, HealthCheckResult] = {}

    def run(self, checks: Mapping[str, Check], now: float) -> dict[str, HealthCheckResult]:
        started_at = self._monotonic()
        with self._lock:
            for name, check in checks.items():
                if name in self._running:
                    continue
                thread = threading.Thread(
                    target=self._run_one, args=(name, check, now), name=f"otel-render-check-{name}", daemon=True
                )
                self._running[name] = (thread, started_at)
                thread.start()
            waiting = [entry[0] for name, entry in self._running.items() if name in checks]
        deadline = started_at + self.timeout_s
        for thread in waiting:
            thread.join(max(0.0, deadline - self._monotonic()))
        results = {}
        with self._lock:
            for name in checks:
                running = self._running.get(name)
                if running is not None:
                    running_for = self._monotonic() - running[1]
                    results[name] = HealthCheckResult(
                        DEGRADED,
                        time=utc_now_iso(now),
                        output=f"the check has not answered for {running_for:.1f} s (timeout {self.timeout_s:g} s)",
                    )
                else:
                    results[name] = self._results.get(name) or HealthCheckResult(DEGRADED, time=utc_now_iso(now))
        return results

    def _run_one(self, name: str, check: Check, now: float) -> None:
        try:
            result = _clean(check(now), now)
        except Exception as exc:  # pylint: disable=broad-except
            message = scrubber.text(f"{type(exc).__name__}: {exc}")[:MAX_OUTPUT_CHARS]
            result = HealthCheckResult(DEGRADED, time=utc_now_iso(now), output=f"the check failed: {message}")
        with self._lock:
            self._results[name] = result
            self._running.pop(name, None)

    def reset_after_fork(self) -> None:
        """A child has none of its parent's check threads."""
        self._lock = threading.Lock()
        self._running = {}
        self._results = {}


class MemoryCheck:
    """The ``memory`` check: instance memory from the latest merged metrics."""

    def __init__(
        self,
        utilization: Callable[[], tuple[float | None, int | None, int | None]],
        *,
        warn_percent: float,
        critical_percent: float,
        grace_s: float,
    ) -> None:
        self._utilization = utilization
        self.warn_percent = warn_percent
        self.critical_percent = max(critical_percent, warn_percent)
        self.grace_s = grace_s
        self.critical_since: float | None = None

    def __call__(self, now: float) -> HealthCheckResult:
        utilization, used, limit = self._utilization()
        result, self.critical_since = memory_result(
            utilization=utilization,
            used=used,
            limit=limit,
            now=now,
            critical_since=self.critical_since,
            warn_percent=self.warn_percent,
            critical_percent=self.critical_percent,
            grace_s=self.grace_s,
        )
        return result
