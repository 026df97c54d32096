"""The database status tracker: is each database the app uses up or down, and
why. The health check, the diagnostics' error contexts, the recovery module
and the endpoints all read it here; none of them runs a query.

One :class:`Database` per connection-pool name (``postgresql://host:5432/app``,
see :mod:`otel_render.db.pool`): its :class:`StatusTracker` (up/down, last
error class, consecutive failures, last successful statement, latency of the
last probe), its :class:`~otel_render.db.circuit.CircuitBreaker`, and a
callable counting its connections. :func:`snapshot` returns plain frozen data.

Successes are recorded on every statement, so :meth:`StatusTracker.record_success`
is two attribute writes unless the status changes. This module does not import
SQLAlchemy: the endpoints may read it in processes that never touch a database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from otel_render import health
from otel_render.db.circuit import CLOSED, CircuitBreaker
from otel_render.diagnostics import utc_now_iso

UP = "up"
DOWN = "down"
UNKNOWN = "unknown"


def error_name(error: BaseException) -> str:
    """``psycopg2.OperationalError``: the driver's error class, also under SQLAlchemy's wrapper."""
    original = getattr(error, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's error
    if isinstance(original, BaseException):
        error = original
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class ConnectionCounts:
    """Connections of one database's pools right now."""

    used: int = 0
    idle: int = 0
    max: int | None = None  # None: unbounded or not a counting pool
    pending: int = 0  # checkouts waiting for a connection


class StatusTracker:
    """Up/down state of one database, fed by statements, checkouts and probes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._forget()

    def _forget(self) -> None:
        self.status = UNKNOWN
        self.since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.consecutive_failures = 0
        self.last_success: float | None = None
        self.probe_latency_s: float | None = None
        self.last_probe: float | None = None
        self._lock = threading.Lock()

    def record_success(self) -> bool:
        """The database answered. Returns True when it was not up before."""
        now = self.clock()
        self.last_success = now
        if self.status == UP and self.consecutive_failures == 0:
            return False
        with self._lock:
            changed = self.status != UP
            self.consecutive_failures = 0
            if changed:
                self.status = UP
                self.since = now
            return changed

    def record_failure(self, error_class: str) -> bool:
        """The database could not be reached. Returns True when it was not down before."""
        now = self.clock()
        with self._lock:
            self.last_error = error_class
            self.last_error_at = now
            self.consecutive_failures += 1
            changed = self.status != DOWN
            if changed:
                self.status = DOWN
                self.since = now
            return changed

    def record_probe(self, latency_s: float | None) -> None:
        """A probe finished (``latency_s`` None when it failed)."""
        self.last_probe = self.clock()
        if latency_s is not None:
            self.probe_latency_s = latency_s

    def reset(self) -> None:
        """Forget everything (a forked child starts unknown, with a fresh lock)."""
        self._forget()


@dataclass
class Database:
    """Everything the package tracks about one database (one pool name)."""

    name: str
    system: str
    tracker: StatusTracker = field(default_factory=StatusTracker)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    connections: Callable[[], ConnectionCounts] = ConnectionCounts


@dataclass(frozen=True)
class DatabaseStatus:
    """A snapshot of one database, for health, endpoints and recovery."""

    name: str
    system: str
    status: str  # up | down | unknown
    since: str | None
    circuit: str  # closed | open | half_open
    consecutiveFailures: int  # noqa: N815 - JSON field names, like the seed's
    lastError: str | None  # noqa: N815
    lastSuccess: str | None  # noqa: N815
    probeLatencyMs: float | None  # noqa: N815
    activeConnections: int  # noqa: N815
    idleConnections: int  # noqa: N815
    maxConnections: int | None  # noqa: N815

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_databases: dict[str, Database] = {}
_lock = threading.Lock()


def register(database: Database) -> Database:
    """Track ``database``; returns the one already tracked under its name, if any."""
    with _lock:
        return _databases.setdefault(database.name, database)


def databases() -> list[Database]:
    with _lock:
        return list(_databases.values())


def _iso(moment: float | None) -> str | None:
    return utc_now_iso(moment) if moment is not None else None


def describe(database: Database) -> DatabaseStatus:
    tracker = database.tracker
    try:
        counts = database.connections()
    except Exception:  # pylint: disable=broad-except
        counts = ConnectionCounts()
    return DatabaseStatus(
        name=database.name,
        system=database.system,
        status=tracker.status,
        since=_iso(tracker.since),
        circuit=database.breaker.state,
        consecutiveFailures=tracker.consecutive_failures,
        lastError=tracker.last_error,
        lastSuccess=_iso(tracker.last_success),
        probeLatencyMs=round(tracker.probe_latency_s * 1000, 3) if tracker.probe_latency_s is not None else None,
        activeConnections=counts.used,
        idleConnections=counts.idle,
        maxConnections=counts.max,
    )


def snapshot() -> list[DatabaseStatus]:
    """The state of every database this process has used, in first-use order."""
    return [describe(database) for database in databases()]


def is_up() -> bool:
    """False when any database is down (the seed's ``databaseStatus``)."""
    return all(database.tracker.status != DOWN for database in databases())


def health_check(now: float) -> health.HealthCheckResult:
    """The ``database`` health check: degraded while a database is down.

    Degraded, not unhealthy: the instance is alive and restarting it cannot
    fix the database.
    """
    statuses = snapshot()
    when = utc_now_iso(now)
    if not statuses:
        return health.HealthCheckResult(health.HEALTHY, time=when, output="no database used yet")
    down = [status for status in statuses if status.status == DOWN]
    latencies = [status.probeLatencyMs for status in statuses if status.probeLatencyMs is not None]
    observed = max(latencies) if latencies else None
    if down:
        output = "; ".join(
            f"{status.name} down since {status.since} ({status.lastError}, "
            f"{status.consecutiveFailures} failures, circuit {status.circuit})"
            for status in down
        )
        return health.HealthCheckResult(health.DEGRADED, observed, "ms", when, output)
    open_circuits = [status for status in statuses if status.circuit != CLOSED]
    if open_circuits:
        output = "; ".join(f"{status.name}: circuit {status.circuit}" for status in open_circuits)
        return health.HealthCheckResult(health.DEGRADED, observed, "ms", when, output)
    return health.HealthCheckResult(
        health.HEALTHY, observed, "ms", when, ", ".join(f"{status.name} {status.status}" for status in statuses)
    )


def system_state() -> dict[str, Any]:
    """The error context's ``system`` fields: ``databaseStatus`` and ``activeConnections``."""
    active = 0
    for database in databases():
        try:
            active += database.connections().used
        except Exception:  # pylint: disable=broad-except
            pass
    return {"databaseStatus": is_up(), "activeConnections": active}


def reset_after_fork() -> None:
    """A forked child starts with every database unknown and every circuit closed."""
    global _lock
    _lock = threading.Lock()
    for database in list(_databases.values()):
        database.tracker.reset()
        database.breaker.reset()
