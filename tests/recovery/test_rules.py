"""The rules engine with injected values and clock: thresholds, durations,
cooldowns, escalation, recovery and the action budget."""

from __future__ import annotations

import pytest

from otel_render.recovery.rules import (
    ESCALATE,
    FIRE,
    RECOVER,
    ActionBudget,
    LeakDetector,
    Rule,
    RuleEngine,
    least_squares_slope,
)

HIGH = Rule("memory_high", "memory.utilization", 0.8, "gc_collect", for_evaluations=2, cooldown_s=30,
            escalate_after=2, recover_action="resume")


def run(engine, values_by_time):
    """Feed (now, value) pairs; return [(now, kind)] for each decision."""
    out = []
    for now, value in values_by_time:
        for decision in engine.evaluate({"memory.utilization": value}, now):
            out.append((now, decision.kind))
    return out


def test_fires_only_after_the_configured_number_of_consecutive_breaches():
    engine = RuleEngine([HIGH])
    assert run(engine, [(0, 0.85), (10, 0.5), (20, 0.85)]) == []  # the dip resets the count
    assert run(engine, [(30, 0.9)]) == [(30, FIRE)]


def test_cooldown_then_ineffective_firings_escalate_instead_of_looping():
    engine = RuleEngine([HIGH])
    timeline = [(t, 0.9) for t in range(0, 200, 10)]
    decisions = run(engine, timeline)
    # fire at 10 (second breach), again after the 30 s cooldown (40: first ineffective),
    # then at 70 the second ineffective firing escalates; nothing after that.
    assert decisions == [(10, FIRE), (40, FIRE), (70, ESCALATE)]
    assert engine.escalated() == ["memory_high"]


def test_clearing_recovers_and_resets_escalation():
    engine = RuleEngine([HIGH])
    run(engine, [(t, 0.9) for t in range(0, 80, 10)])
    assert engine.state("memory_high").escalated
    decisions = engine.evaluate({"memory.utilization": 0.5}, 80)
    assert [(d.kind, d.action) for d in decisions] == [(RECOVER, "resume")]
    assert engine.escalated() == []
    # A fresh episode starts over (cooldown measured from the last firing, long past).
    assert run(engine, [(200, 0.9), (210, 0.9)]) == [(210, FIRE)]


def test_effective_action_does_not_count_towards_escalation():
    engine = RuleEngine([HIGH])
    pattern = [(0, 0.9), (10, 0.9), (20, 0.5), (100, 0.9), (110, 0.9), (120, 0.5), (200, 0.9), (210, 0.9)]
    kinds = [kind for _, kind in run(engine, pattern)]
    assert kinds == [FIRE, RECOVER, FIRE, RECOVER, FIRE]
    assert not engine.state("memory_high").escalated


def test_missing_signal_keeps_state_and_disabled_rules_never_fire():
    engine = RuleEngine([HIGH, Rule("off", "memory.utilization", 0.1, "x", enabled=False)])
    engine.evaluate({"memory.utilization": 0.9}, 0)
    engine.evaluate({}, 5)  # no data this time
    decisions = engine.evaluate({"memory.utilization": 0.9}, 10)
    assert [(d.rule.name, d.kind) for d in decisions] == [("memory_high", FIRE)]


def test_below_threshold_rules_and_reasons():
    engine = RuleEngine([Rule("db_down", "db.status", 0, "probe_now", above=False, recover_action="resume")])
    [fired] = engine.evaluate({"db.status": 0}, 0)
    assert fired.kind == FIRE and fired.action == "probe_now"
    assert fired.reason == "db.status=0 <= 0 for 1 evaluation(s)"
    [recovered] = engine.evaluate({"db.status": 1}, 1)
    assert recovered.kind == RECOVER and recovered.action == "resume"


def test_replacing_a_rule_by_name_restarts_its_state_and_bad_rules_are_refused():
    engine = RuleEngine([HIGH])
    run(engine, [(0, 0.9), (10, 0.9)])
    engine.add_rule(Rule("memory_high", "memory.utilization", 0.95, "gc_collect"))
    assert engine.state("memory_high").fired_at is None
    with pytest.raises(ValueError):
        engine.add_rule(Rule("bad", "x", 1, "a", for_evaluations=0))


def test_action_budget_limits_a_storm_over_a_sliding_window():
    budget = ActionBudget(limit=3, window_s=60)
    assert [budget.try_take(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert budget.try_take(60) is True  # the first one left the window
    assert budget.try_take(60.5) is False


def test_least_squares_slope():
    assert least_squares_slope([(0, 10), (1, 12), (2, 14)]) == pytest.approx(2.0)
    assert least_squares_slope([(0, 5)]) is None
    assert least_squares_slope([(1, 5), (1, 6)]) is None


def test_leak_detector_needs_a_full_window_of_steady_growth():
    detector = LeakDetector(window_s=100, threshold_bytes_per_s=1000, min_samples=5)
    for t in range(0, 60, 10):
        detector.add(t, 100_000_000 + 2000 * t)
    assert not detector.suspected()  # only 50 s of a 100 s window
    for t in range(60, 130, 10):
        detector.add(t, 100_000_000 + 2000 * t)
    assert detector.suspected()
    assert detector.slope() == pytest.approx(2000)


def test_leak_detector_ignores_a_sawtooth_that_returns_to_baseline():
    detector = LeakDetector(window_s=100, threshold_bytes_per_s=1000, min_samples=5)
    for t in range(0, 200, 10):
        detector.add(t, 100_000_000 + (5_000_000 if (t // 10) % 2 else 0))
    assert not detector.suspected()
