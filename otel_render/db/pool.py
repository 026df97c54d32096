"""Connection-pool meters, per the database client semantic conventions, and
the pool name they carry.

``db.client.connection.pool.name`` is built from the engine's URL without
user, password or query (``postgresql://db.internal:5432/app``,
``sqlite:///app.db``): stable across workers and restarts, bounded, and free
of credentials. Engines with the same name (the app's and a job store's, for
example) count as one database: their connections add up and they share one
status and one circuit breaker.

Instruments (see ``docs/metrics.md``):

- observed at collection time, from the pools themselves and what the
  checkout hook counts: ``db.client.connection.count`` (``state``
  idle/used), ``db.client.connection.max``,
  ``db.client.connection.pending_requests``, ``otel_render.db.status``,
  ``otel_render.db.circuit.state``; the checkout path records nothing for them;
- recorded as things happen: ``db.client.connection.timeouts``, ``db.client.connection.wait_time``,
  ``db.client.connection.use_time``, ``db.client.connection.create_time``,
  ``db.client.operation.duration`` and ``otel_render.db.deadline.exceeded``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation

from otel_render.db import status as db_status
from otel_render.db.circuit import STATES
from otel_render.db.status import DOWN, UP, ConnectionCounts

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: The semantic conventions' advice for database durations, in seconds.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
CONNECTION_TIME_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


def pool_name(backend: str, host: str | None, port: int | None, database: str | None) -> str:
    """``backend://host:port/database``, never user, password or query."""
    if backend == "sqlite":
        return f"sqlite:///{database}" if database and database != ":memory:" else "sqlite://"
    address = host or ""
    if port is not None:
        address += f":{port}"
    return f"{backend}://{address}/{database or ''}"


def pool_name_of_url(url: Any) -> str:
    """The pool name of a SQLAlchemy ``URL``."""
    return pool_name(url.get_backend_name(), url.host, url.port, url.database)


def pool_counts(pool: Any, counted_used: int = 0, pending: int = 0) -> ConnectionCounts:
    """Used, idle and maximum connections of one SQLAlchemy pool, and the
    ``pending`` checkouts the checkout hook counted.

    ``QueuePool`` (and its async variant) knows all three. Other pools
    (``NullPool``, ``StaticPool``, ``SingletonThreadPool``) keep no such
    numbers: they report ``counted_used``, what the checkout and checkin
    events counted (used only).
    """
    checkedout = getattr(pool, "checkedout", None)
    checkedin = getattr(pool, "checkedin", None)
    size = getattr(pool, "size", None)
    if callable(checkedout) and callable(checkedin) and callable(size):
        overflow = getattr(pool, "_max_overflow", 0)
        maximum = size() + overflow if overflow is not None and overflow >= 0 else None
        return ConnectionCounts(
            used=max(0, checkedout()), idle=max(0, checkedin()), max=maximum, pending=max(0, pending)
        )
    return ConnectionCounts(used=max(0, counted_used), pending=max(0, pending))


def add_counts(counts: Iterable[ConnectionCounts]) -> ConnectionCounts:
    used = idle = pending = 0
    maximum: int | None = 0
    for count in counts:
        used += count.used
        idle += count.idle
        pending += count.pending
        maximum = None if maximum is None or count.max is None else maximum + count.max
    return ConnectionCounts(used, idle, maximum, pending)


@dataclass
class PoolInstruments:
    """Every database instrument, created once per instrumentation."""

    operation_duration: Histogram
    timeouts: Counter
    wait_time: Histogram
    use_time: Histogram
    create_time: Histogram
    deadline_exceeded: Counter


def create_instruments(meter: Meter, databases: Callable[[], list[db_status.Database]] = db_status.databases) -> PoolInstruments:
    """Create the instruments; the observable ones read ``databases()`` when collected."""

    def observe_counts(_options: CallbackOptions) -> Iterable[Observation]:
        for database in databases():
            counts = database.connections()
            yield Observation(counts.idle, {POOL_NAME: database.name, STATE: "idle"})
            yield Observation(counts.used, {POOL_NAME: database.name, STATE: "used"})

    def observe_max(_options: CallbackOptions) -> Iterable[Observation]:
        for database in databases():
            maximum = database.connections().max
            if maximum is not None:
                yield Observation(maximum, {POOL_NAME: database.name})

    def observe_pending(_options: CallbackOptions) -> Iterable[Observation]:
        for database in databases():
            yield Observation(database.connections().pending, {POOL_NAME: database.name})

    def observe_status(_options: CallbackOptions) -> Iterable[Observation]:
        for database in databases():
            if database.tracker.status in (UP, DOWN):
                yield Observation(1 if database.tracker.status == UP else 0, {POOL_NAME: database.name})

    def observe_circuit(_options: CallbackOptions) -> Iterable[Observation]:
        for database in databases():
            current = database.breaker.state
            for state in STATES:
                yield Observation(1 if state == current else 0, {POOL_NAME: database.name, "state": state})

    meter.create_observable_up_down_counter(
        "db.client.connection.count",
        [observe_counts],
        unit="{connection}",
        description="The number of connections that are currently in state described by the state attribute",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.max",
        [observe_max],
        unit="{connection}",
        description="The maximum number of open connections allowed",
    )
    meter.create_observable_up_down_counter(
        "db.client.connection.pending_requests",
        [observe_pending],
        unit="{request}",
        description="The number of current pending requests for an open connection",
    )
    meter.create_observable_gauge(
        "otel_render.db.status", [observe_status], unit="1", description="1 when the database answers, 0 when it is down"
    )
    meter.create_observable_gauge(
        "otel_render.db.circuit.state",
        [observe_circuit],
        unit="1",
        description="1 for the circuit breaker's current state, 0 for the others",
    )
    return PoolInstruments(
        operation_duration=meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        ),
        timeouts=meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a connection from the pool",
        ),
        wait_time=meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool",
            explicit_bucket_boundaries_advisory=list(CONNECTION_TIME_BUCKETS),
        ),
        use_time=meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool",
            explicit_bucket_boundaries_advisory=list(CONNECTION_TIME_BUCKETS),
        ),
        create_time=meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection",
            explicit_bucket_boundaries_advisory=list(CONNECTION_TIME_BUCKETS),
        ),
        deadline_exceeded=meter.create_counter(
            "otel_render.db.deadline.exceeded",
            unit="{operation}",
            description="Database operations cut off by the client-side deadline",
        ),
    )
