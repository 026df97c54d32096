"""The recovery rules engine: pure decisions over meter values and a clock.

A :class:`Rule` watches one *signal* (a number the manager reads from the
meters, such as the instance's memory utilization). When the signal is past the
rule's threshold for ``for_evaluations`` consecutive evaluations, the rule
*fires* its action; it then stays quiet for ``cooldown_s``. If the signal is
still past the threshold when the cooldown ends, the firing had no effect: the
rule fires again, up to ``escalate_after`` times in a row, and then
*escalates* instead of looping: it stops acting and reports itself escalated
(the health model turns that into a failed check) until the signal clears.
When the signal clears after a firing, the rule *recovers* and, if it has one,
runs its recover action (for example, resume what it paused; pauses have
owners, see :func:`otel_render.scheduler.pause_all`).

Nothing here reads a meter, a clock or a file: :meth:`RuleEngine.evaluate` is
fed values and ``now``, which is what the tests do.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

FIRE = "fire"
RECOVER = "recover"
ESCALATE = "escalate"


@dataclass(frozen=True)
class Rule:
    """When ``signal`` is at or past ``threshold``, run ``action``."""

    name: str
    signal: str
    threshold: float
    action: str
    above: bool = True  # breach when value >= threshold; False: when value <= threshold
    for_evaluations: int = 1
    cooldown_s: float = 60.0
    escalate_after: int = 3
    recover_action: str | None = None
    enabled: bool = True
    description: str = ""

    def breached(self, value: float) -> bool:
        return value >= self.threshold if self.above else value <= self.threshold


@dataclass
class RuleState:
    """What the engine remembers about one rule between evaluations."""

    breaching: int = 0  # consecutive evaluations past the threshold
    fired_at: float | None = None
    active: bool = False  # fired, and the signal has not cleared since
    ineffective_firings: int = 0
    escalated: bool = False
    last_value: float | None = None


@dataclass(frozen=True)
class Decision:
    """What the engine decided for one rule in one evaluation."""

    rule: Rule
    kind: str  # fire | recover | escalate
    value: float
    reason: str

    @property
    def action(self) -> str | None:
        if self.kind == FIRE:
            return self.rule.action
        if self.kind == RECOVER:
            return self.rule.recover_action
        return None


class RuleEngine:
    """Evaluates rules against values; keeps per-rule state. Thread-safe."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, Rule] = {}
        self._states: dict[str, RuleState] = {}
        for rule in rules:
            self.add_rule(rule)

    def add_rule(self, rule: Rule) -> None:
        """Add ``rule``, or replace the rule of the same name (its state restarts)."""
        if rule.for_evaluations < 1 or rule.escalate_after < 1 or rule.cooldown_s < 0:
            raise ValueError(f"rule {rule.name!r}: for_evaluations and escalate_after must be >= 1, cooldown_s >= 0")
        with self._lock:
            self._rules[rule.name] = rule
            self._states[rule.name] = RuleState()

    def remove_rule(self, name: str) -> None:
        with self._lock:
            self._rules.pop(name, None)
            self._states.pop(name, None)

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules.values())

    def state(self, name: str) -> RuleState:
        with self._lock:
            return replace(self._states[name])

    def escalated(self) -> list[str]:
        with self._lock:
            return [name for name, state in self._states.items() if state.escalated]

    def evaluate(self, values: Mapping[str, float], now: float) -> list[Decision]:
        """One evaluation: a decision for each rule that fires, recovers or escalates.

        A rule whose signal is missing from ``values`` keeps its state untouched.
        """
        decisions: list[Decision] = []
        with self._lock:
            for name, rule in self._rules.items():
                value = values.get(rule.signal)
                if not rule.enabled or value is None:
                    continue
                decision = self._step(rule, self._states[name], float(value), now)
                if decision is not None:
                    decisions.append(decision)
        return decisions

    @staticmethod
    def _step(rule: Rule, state: RuleState, value: float, now: float) -> Decision | None:
        state.last_value = value
        comparison = ">=" if rule.above else "<="
        if not rule.breached(value):
            state.breaching = 0
            if not state.active:
                return None
            state.active = False
            state.ineffective_firings = 0
            state.escalated = False
            return Decision(rule, RECOVER, value, f"{rule.signal}={value:g} cleared {comparison} {rule.threshold:g}")

        state.breaching += 1
        if state.breaching < rule.for_evaluations:
            return None
        if state.fired_at is not None and now - state.fired_at < rule.cooldown_s:
            return None
        if state.escalated:
            return None
        reason = f"{rule.signal}={value:g} {comparison} {rule.threshold:g} for {state.breaching} evaluation(s)"
        if state.active:
            # Still past the threshold a whole cooldown after firing: that firing did not help.
            state.ineffective_firings += 1
            if state.ineffective_firings >= rule.escalate_after:
                state.escalated = True
                state.fired_at = now
                return Decision(
                    rule, ESCALATE, value, f"{reason}; {state.ineffective_firings} firings had no effect"
                )
        state.active = True
        state.fired_at = now
        return Decision(rule, FIRE, value, reason)


@dataclass
class ActionBudget:
    """At most ``limit`` actions per sliding ``window_s``: a storm brake across rules."""

    limit: int = 10
    window_s: float = 60.0
    _taken: deque[float] = field(default_factory=deque)

    def try_take(self, now: float) -> bool:
        while self._taken and now - self._taken[0] >= self.window_s:
            self._taken.popleft()
        if len(self._taken) >= self.limit:
            return False
        self._taken.append(now)
        return True


def least_squares_slope(samples: Iterable[tuple[float, float]]) -> float | None:
    """Slope (value per second) of the best straight line through ``(time, value)``."""
    points = list(samples)
    count = len(points)
    if count < 2:
        return None
    mean_t = sum(t for t, _ in points) / count
    mean_v = sum(v for _, v in points) / count
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


@dataclass
class LeakDetector:
    """Suspects a leak when USS grows steadily: the least-squares slope over a
    full ``window_s`` of samples exceeds ``threshold_bytes_per_s``."""

    window_s: float = 600.0
    threshold_bytes_per_s: float = 50_000.0
    min_samples: int = 10
    _samples: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, now: float, uss_bytes: float) -> None:
        self._samples.append((now, uss_bytes))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def slope(self) -> float | None:
        return least_squares_slope(self._samples)

    def suspected(self) -> bool:
        if len(self._samples) < self.min_samples:
            return False
        covered = self._samples[-1][0] - self._samples[0][0]
        if covered < self.window_s * 0.9:
            return False
        slope = self.slope()
        return slope is not None and slope > self.threshold_bytes_per_s
