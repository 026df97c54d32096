"""The circuit breaker's transitions, driven by an injected clock."""

from __future__ import annotations

from otel_render.db.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kwargs) -> CircuitBreaker:
    return CircuitBreaker(half_open_interval_s=1.0, clock=clock, **kwargs)


def test_closed_lets_everything_through_and_one_hard_failure_opens_it():
    clock = Clock()
    circuit = breaker(clock)
    assert all(circuit.allow().allowed for _ in range(5))
    assert not circuit.take_trial()  # nothing to try while closed
    assert circuit.record_failure() == OPEN
    decision = circuit.allow()
    assert not decision.allowed and decision.retry_in_s == 1.0
    clock.now += 0.4
    assert not circuit.allow().allowed
    assert abs(circuit.allow().retry_in_s - 0.6) < 1e-9


def test_the_background_takes_exactly_one_trial_per_interval_and_requests_keep_failing_fast():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    clock.now += 0.99
    assert not circuit.allow().allowed  # a request turned away: there is demand
    assert not circuit.take_trial()
    clock.now += 0.01
    assert circuit.take_trial()
    assert circuit.state == HALF_OPEN
    assert not circuit.take_trial()  # one trial in flight at a time
    assert [circuit.allow().allowed for _ in range(3)] == [False, False, False]
    # The trial fails: open again, next trial one interval later.
    assert circuit.record_failure(trial=True) == OPEN
    clock.now += 0.99
    assert not circuit.take_trial()
    clock.now += 0.01
    assert circuit.take_trial()


def test_without_requests_turned_away_there_is_no_trial():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    clock.now += 60
    assert not circuit.take_trial()  # an idle app: the probe's backoff is enough


def test_a_successful_trial_closes_it():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    circuit.allow()
    clock.now += 1.0
    assert circuit.take_trial()
    assert circuit.record_success() == CLOSED
    decision = circuit.allow()
    assert decision.allowed and not decision.trial
    assert circuit.record_success() is None  # no change, no transition reported


def test_a_request_takes_the_trial_only_when_the_background_is_late():
    clock = Clock()
    circuit = breaker(clock)  # a request may take it two intervals after it was due
    circuit.record_failure()
    clock.now += 0.5
    assert not circuit.allow().allowed  # requests turned away from here on
    clock.now += 0.5 + 1.99
    assert not circuit.allow().allowed
    clock.now += 0.01
    decision = circuit.allow()
    assert decision.allowed and decision.trial
    assert not circuit.allow().allowed and not circuit.take_trial()
    assert circuit.record_success() == CLOSED


def test_after_a_long_idle_time_the_first_request_is_not_made_the_trial():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    clock.now += 600
    assert not circuit.allow().allowed  # fails fast; the background tries next
    assert circuit.take_trial()


def test_failures_while_open_do_not_push_the_next_trial_back():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    for _ in range(5):
        clock.now += 0.15
        assert circuit.record_failure() is None
        assert not circuit.allow().allowed
    clock.now = 1001.0
    assert circuit.take_trial()


def test_a_failure_from_elsewhere_while_the_trial_runs_leaves_the_verdict_to_the_trial():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    circuit.allow()
    clock.now += 1.0
    assert circuit.take_trial()
    assert circuit.record_failure() is None
    assert circuit.state == HALF_OPEN
    assert circuit.record_success() == CLOSED


def test_a_trial_that_never_reports_frees_the_slot_after_its_timeout():
    clock = Clock()
    circuit = breaker(clock, trial_timeout_s=10.0)
    circuit.record_failure()
    circuit.allow()
    clock.now += 1.0
    assert circuit.take_trial()
    clock.now += 9.9
    assert not circuit.allow().allowed and not circuit.take_trial()
    clock.now += 0.1
    assert circuit.take_trial()


def test_an_abandoned_trial_lets_the_next_one_go_at_once():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    circuit.allow()
    clock.now += 1.0
    assert circuit.take_trial()
    circuit.abandon_trial()
    assert circuit.state == OPEN
    circuit.allow()
    assert circuit.take_trial()


def test_threshold_counts_consecutive_failures_and_a_success_resets_them():
    clock = Clock()
    circuit = breaker(clock, failure_threshold=3)
    circuit.record_failure()
    circuit.record_failure()
    circuit.record_success()
    circuit.record_failure()
    circuit.record_failure()
    assert circuit.state == CLOSED
    assert circuit.record_failure() == OPEN


def test_reset_closes_and_forgets():
    clock = Clock()
    circuit = breaker(clock)
    circuit.record_failure()
    circuit.reset()
    assert circuit.state == CLOSED and circuit.opened_at is None and circuit.allow().allowed
