"""Probe schedule: exponential backoff with full jitter, with an injected clock and random source."""

from __future__ import annotations

import math

import pytest

from otel_render.db import probe as db_probe
from otel_render.db import status as db_status
from otel_render.db.circuit import CLOSED, OPEN, CircuitBreaker
from otel_render.db.probe import ProbeLoop, ProbeSchedule, backoff_ceiling, backoff_delay
from otel_render.db.status import DOWN, UP, Database, StatusTracker


def test_ceilings_follow_the_seed_1_2_4_8_16_then_stay_capped():
    assert [backoff_ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 16, 16, 16]
    assert backoff_ceiling(10_000) == 16


@pytest.mark.parametrize("attempt", range(7))
def test_full_jitter_spans_zero_to_the_ceiling(attempt):
    assert backoff_delay(attempt, lambda: 0.0) == 0.0
    assert backoff_delay(attempt, lambda: 0.5) == backoff_ceiling(attempt) / 2
    assert backoff_delay(attempt, lambda: 0.999999) == pytest.approx(backoff_ceiling(attempt), rel=1e-5)
    assert backoff_delay(attempt, lambda: 0.999999) < backoff_ceiling(attempt)


def test_schedule_backs_off_while_down_and_returns_to_the_interval_when_up():
    schedule = ProbeSchedule(interval_up_s=30.0, rng=lambda: 1.0)
    schedule.went_down(now=100.0)
    assert schedule.next_at == 101.0
    schedule.went_down(now=100.5)  # once per outage: not restarted
    assert schedule.next_at == 101.0
    delays = [schedule.probed(False, now=t) for t in (101.0, 102.0, 104.0, 108.0, 116.0, 132.0)]
    assert delays == [1, 2, 4, 8, 16, 16]
    assert schedule.probed(True, now=150.0) == 30.0
    assert schedule.next_at == 180.0 and not schedule.retrying
    schedule.went_down(now=181.0)
    assert schedule.next_at == 182.0  # a new outage starts again at 1 s


def test_schedule_with_no_interval_probes_only_while_down():
    schedule = ProbeSchedule(interval_up_s=0.0, rng=lambda: 0.5)
    assert schedule.probed(True, now=10.0) == math.inf
    assert not schedule.due(1e12)
    schedule.run_now(now=20.0)
    assert schedule.due(20.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(monkeypatch):
    monkeypatch.setattr(db_status, "_databases", {})
    clock = Clock()
    database = db_status.register(
        Database("postgresql://db:5432/app", "postgresql", StatusTracker(clock), CircuitBreaker(clock=clock))
    )
    return database, clock


def scripted(clock, outcomes):
    probed_at = []
    outcomes = iter(outcomes)

    def probe(target):
        probed_at.append(clock.now)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return probe, probed_at


def run(loop, clock, seconds):
    """Tick the loop every quarter second for ``seconds``, without sleeping."""
    start = clock.now
    for step in range(int(seconds * 4) + 1):
        clock.now = start + step * 0.25
        loop.tick()


def test_a_down_database_is_probed_with_backoff(database):
    database, clock = database
    probe, probed_at = scripted(clock, [ConnectionError("refused")] * 3 + [0.004])
    loop = ProbeLoop(probe, interval_up_s=30.0, clock=clock, rng=lambda: 1.0)
    database.tracker.record_failure("psycopg2.OperationalError")
    database.breaker.record_failure()  # open, but no request is turned away: an idle app
    run(loop, clock, 20)
    # First retry after 1 s, then 1, 2, 4 s (full jitter at its ceiling).
    assert probed_at == [1.0, 2.0, 4.0, 8.0]
    assert database.tracker.status == UP
    assert database.tracker.probe_latency_s == 0.004


def test_while_the_circuit_is_open_the_loop_runs_its_trial_every_interval_and_closes_it(database):
    database, clock = database
    probe, probed_at = scripted(clock, [ConnectionError("refused"), ConnectionError("refused"), 0.002])
    loop = ProbeLoop(probe, interval_up_s=30.0, clock=clock, rng=lambda: 1.0)
    database.tracker.record_failure("psycopg2.OperationalError")
    database.breaker.record_failure()
    original_tick = loop.tick

    def tick_with_traffic():
        database.breaker.allow()  # requests keep arriving and are turned away
        original_tick()

    loop.tick = tick_with_traffic
    run(loop, clock, 10)
    # One trial per half-open interval (1 s), whatever the backoff says.
    assert probed_at == [1.0, 2.0, 3.0]
    assert database.breaker.state == CLOSED
    assert database.tracker.status == UP


def test_a_failed_probe_marks_the_database_down_and_opens_the_circuit(database):
    database, clock = database
    loop = ProbeLoop(lambda target: (_ for _ in ()).throw(TimeoutError("hung")), interval_up_s=5.0, clock=clock)
    database.tracker.record_success()
    loop.tick()  # at 0: the first probe of a database that is up is one interval away
    assert database.tracker.status == UP
    clock.now = 5.0
    loop.tick()
    assert database.tracker.status == DOWN
    assert database.tracker.last_error == "TimeoutError"
    assert database.breaker.state == OPEN


def test_request_probe_makes_every_probe_due_now(database, monkeypatch):
    database, clock = database
    calls = []
    loop = ProbeLoop(lambda target: calls.append(clock.now) or 0.001, interval_up_s=300.0, clock=clock)
    monkeypatch.setattr(db_probe, "_loop", loop)
    loop.tick()
    assert calls == []  # up (or unknown): next probe in 300 s
    clock.now = 3.0
    assert db_probe.request_probe() is True
    loop.tick()
    assert calls == [3.0]


def test_request_probe_without_a_loop_says_so(monkeypatch):
    monkeypatch.setattr(db_probe, "_loop", None)
    assert db_probe.request_probe() is False


def test_the_loop_does_nothing_where_it_should_not_run(database):
    database, clock = database
    calls = []
    loop = ProbeLoop(lambda target: calls.append(1) or 0.0, interval_up_s=1.0, clock=clock, should_run=lambda: False)
    database.tracker.record_failure("x")
    clock.now = 100.0
    loop.tick()
    assert calls == []
