"""The status tracker and what health and error contexts read from it."""

from __future__ import annotations

import pytest

from otel_render import diagnostics, health
from otel_render.db import status as db_status
from otel_render.db.circuit import CircuitBreaker
from otel_render.db.status import DOWN, UNKNOWN, UP, ConnectionCounts, Database, StatusTracker, error_name


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_databases(monkeypatch):
    monkeypatch.setattr(db_status, "_databases", {})


def test_tracker_transitions_and_counts():
    clock = Clock()
    tracker = StatusTracker(clock)
    assert tracker.status == UNKNOWN
    assert tracker.record_success() is True
    assert tracker.record_success() is False
    clock.now += 5
    assert tracker.record_failure("psycopg2.OperationalError") is True
    assert tracker.record_failure("psycopg2.OperationalError") is False
    assert (tracker.status, tracker.consecutive_failures, tracker.since) == (DOWN, 2, clock.now)
    assert tracker.last_success == clock.now - 5
    clock.now += 1
    assert tracker.record_success() is True
    assert (tracker.status, tracker.consecutive_failures, tracker.last_error) == (UP, 0, "psycopg2.OperationalError")


def test_health_is_degraded_not_unhealthy_while_a_database_is_down():
    clock = Clock()
    assert db_status.health_check(clock.now).status == health.HEALTHY
    database = db_status.register(Database("postgresql://db:5432/app", "postgresql", StatusTracker(clock)))
    database.tracker.record_success()
    database.tracker.record_probe(0.0042)
    result = db_status.health_check(clock.now)
    assert (result.status, result.observedValue, result.observedUnit) == (health.HEALTHY, 4.2, "ms")
    database.tracker.record_failure("psycopg2.OperationalError")
    database.breaker.record_failure()
    result = db_status.health_check(clock.now)
    assert result.status == health.DEGRADED
    assert "postgresql://db:5432/app down" in result.output and "psycopg2.OperationalError" in result.output
    assert "circuit open" in result.output


def test_snapshot_and_the_error_context_fields():
    database = db_status.register(
        Database(
            "postgresql://db:5432/app",
            "postgresql",
            connections=lambda: ConnectionCounts(used=3, idle=2, max=15),
        )
    )
    assert db_status.register(Database("postgresql://db:5432/app", "postgresql")) is database
    database.tracker.record_failure("psycopg2.OperationalError")
    (status,) = db_status.snapshot()
    assert (status.status, status.activeConnections, status.idleConnections, status.maxConnections) == ("down", 3, 2, 15)
    assert db_status.system_state() == {"databaseStatus": False, "activeConnections": 3}
    diagnostics.add_system_state("database", db_status.system_state)
    context = diagnostics.capture_error_context(RuntimeError("boom"), correlation_id=None, trace_id=None)
    assert context.system["databaseStatus"] is False and context.system["activeConnections"] == 3


def test_reset_after_fork_forgets_the_parents_view():
    database = db_status.register(Database("sqlite://", "sqlite", breaker=CircuitBreaker()))
    database.tracker.record_failure("x")
    database.breaker.record_failure()
    db_status.reset_after_fork()
    assert database.tracker.status == UNKNOWN and database.breaker.state == "closed"


def test_error_names_unwrap_the_drivers_error():
    class Wrapper(Exception):
        def __init__(self, orig):
            self.orig = orig

    assert error_name(TimeoutError()) == "TimeoutError"
    assert error_name(Wrapper(ConnectionRefusedError())) == "ConnectionRefusedError"
    assert error_name(Wrapper(None)).endswith("Wrapper")
