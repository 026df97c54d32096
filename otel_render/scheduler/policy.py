"""The supervisor's decisions, as pure functions of plain data and a time.

- :class:`RestartPolicy`: when to restart a dead scheduler (backoff) and when
  to stop trying (circuit breaker: ``limit`` restarts within ``window_s``);
- :func:`stagger_wait`: how long a scheduler waits before it may start, so
  successive schedulers start ``stagger_s`` apart;
- :class:`PauseLedger`: who paused which scheduler, so that an owner (the
  recovery module) resumes only what it paused, never what the app paused;
- :func:`supervisor_interval`: how often the supervisor looks.

Nothing here reads a clock or touches APScheduler: tests pass the times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

RESTART = "restart"
WAIT = "wait"
GIVE_UP = "give_up"

BACKOFF_CAP_S = 60.0


@dataclass(frozen=True)
class RestartDecision:
    action: str  # restart | wait | give_up
    at: float | None = None  # when the restart is due (restart and wait)


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff with a circuit breaker over a sliding window."""

    limit: int
    window_s: float
    backoff_s: float

    def recent(self, restarts: Sequence[float], now: float) -> list[float]:
        """The restarts that still count against the limit at ``now``."""
        return [moment for moment in restarts if now - moment < self.window_s]

    def delay(self, recent_restarts: int) -> float:
        """Wait before the next restart, after ``recent_restarts`` restarts in the window."""
        if self.backoff_s <= 0:
            return 0.0
        cap = max(BACKOFF_CAP_S, self.backoff_s)
        return min(cap, self.backoff_s * (2 ** min(recent_restarts, 32)))

    def decide(self, restarts: Sequence[float], died_at: float, now: float) -> RestartDecision:
        """What to do about a scheduler found dead at ``died_at``."""
        recent = self.recent(restarts, now)
        if len(recent) >= self.limit:
            return RestartDecision(GIVE_UP)
        due = died_at + self.delay(len(recent))
        return RestartDecision(RESTART if now >= due else WAIT, due)


def stagger_wait(last_start: float | None, now: float, stagger_s: float) -> float:
    """Seconds until the next scheduler may start (0: now)."""
    if last_start is None or stagger_s <= 0:
        return 0.0
    return max(0.0, last_start + stagger_s - now)


def supervisor_interval(*, poll_s: float, stagger_s: float, backoff_s: float) -> float:
    """Tick often enough to honour the shortest configured delay, at most every
    second and at least every 50 ms."""
    candidates = [1.0, poll_s / 2]
    candidates += [value / 4 for value in (stagger_s,) if value > 0]
    candidates += [value / 2 for value in (backoff_s,) if value > 0]
    return max(0.05, min(candidates))


@dataclass
class PauseLedger:
    """Owners holding each scheduler paused."""

    owners: dict[str, set[str]] = field(default_factory=dict)

    def pause(self, owner: str, scheduler: str, *, running: bool) -> bool:
        """Record ``owner``'s pause; True when the scheduler must be paused now.

        A scheduler paused by the app (paused, held by no owner) is not
        recorded: the app's pause is not ours to lift.
        """
        holders = self.owners.get(scheduler)
        if holders:
            holders.add(owner)
            return False
        if not running:
            return False
        self.owners[scheduler] = {owner}
        return True

    def resume(self, owner: str, scheduler: str) -> bool:
        """Drop ``owner``'s pause; True when no owner holds it any more and it
        must be resumed now."""
        holders = self.owners.get(scheduler)
        if not holders or owner not in holders:
            return False
        holders.discard(owner)
        if holders:
            return False
        del self.owners[scheduler]
        return True

    def holders(self, scheduler: str) -> frozenset[str]:
        return frozenset(self.owners.get(scheduler, ()))

    def forget(self, scheduler: str) -> None:
        """The app resumed or shut the scheduler down itself: no pause is held."""
        self.owners.pop(scheduler, None)
