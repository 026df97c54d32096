"""The circuit breaker in front of a database's connection pool.

When the database stops answering, every request that checks a connection out
would otherwise wait for its own deadline, and with sync workers all of them
end up parked on dead sockets. The breaker opens on a hard failure (a
connection that cannot be made, a statement or ping cut off by the client-side
deadline, a failed background probe): from then on checkouts fail at once with
a clear error. Every ``half_open_interval_s`` it lets exactly one trial
through; the trial's success closes it, its failure keeps it open for another
interval. So service resumes within about one interval of the database
answering again, whatever the background probe's backoff is doing.

The trial is taken by the background probe thread (:meth:`take_trial`), not
by a request: behind a hung network a trial waits for its whole deadline, and
a sync worker would be parked for that long once a second. It is taken only
when requests were turned away since the last one: an idle app leaves the
database to the probe's backoff. Requests only ever get a trial (from
:meth:`allow`) when the background has not taken one for
``request_trial_after_s`` past its due time, so a process without the probe
thread still recovers.

States: ``closed`` -> ``open`` -> ``half_open`` (one trial in flight) ->
``closed`` or ``open``. Pure logic with an injected clock; thread-safe; the
closed-state check on the hot path takes no lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


@dataclass(frozen=True)
class Decision:
    """Whether a checkout may go ahead; a ``trial`` must report its outcome."""

    allowed: bool
    trial: bool = False
    retry_in_s: float = 0.0


ALLOWED = Decision(True)


class CircuitBreaker:
    """One breaker per database; see the module docstring.

    ``trial_timeout_s`` frees the trial slot if a trial never reports back
    (its thread was killed), so the breaker cannot stay stuck half-open.
    ``request_trial_after_s`` (default: two intervals) is how late the
    background trial may be before a request takes it.
    """

    def __init__(
        self,
        *,
        half_open_interval_s: float = 1.0,
        failure_threshold: int = 1,
        trial_timeout_s: float = 60.0,
        request_trial_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.half_open_interval_s = half_open_interval_s
        self.request_trial_after_s = (
            2 * half_open_interval_s if request_trial_after_s is None else request_trial_after_s
        )
        self.failure_threshold = max(1, failure_threshold)
        self.trial_timeout_s = trial_timeout_s
        self.clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._next_trial_at = 0.0
        self._trial_started: float | None = None
        self._turned_away_at: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    @property
    def opened_at(self) -> float | None:
        """Clock time the breaker last opened (None while it has never opened since closing)."""
        return self._opened_at

    def allow(self) -> Decision:
        """Ask before a request's checkout: closed, always; open, no (see the module docstring)."""
        if self._state == CLOSED:
            return ALLOWED
        return self._trial(self.request_trial_after_s, request=True)

    def take_trial(self) -> bool:
        """For the background thread: True when it should run the trial now
        (open, due, and requests were turned away since the last trial)."""
        if self._state == CLOSED or self._turned_away_at is None:
            return False
        return self._trial(0.0).trial

    def _trial(self, lateness_s: float, request: bool = False) -> Decision:
        with self._lock:
            now = self.clock()
            if self._state == CLOSED:
                return ALLOWED
            if request and self._turned_away_at is None:
                self._turned_away_at = now
            if self._trial_started is not None and now - self._trial_started < self.trial_timeout_s:
                return Decision(False, retry_in_s=self.half_open_interval_s)
            due = self._next_trial_at
            if request:
                # Late means late for the background, which only tries once
                # requests are being turned away.
                due = max(due, self._turned_away_at or due)
            if now >= due + lateness_s:
                self._state = HALF_OPEN
                self._trial_started = now
                self._turned_away_at = None
                return Decision(True, trial=True)
            return Decision(False, retry_in_s=max(0.0, self._next_trial_at - now))

    def record_success(self) -> str | None:
        """The database answered. Returns the new state if it changed."""
        if self._state == CLOSED and self._failures == 0:
            return None
        with self._lock:
            previous = self._state
            self._state = CLOSED
            self._failures = 0
            self._opened_at = None
            self._trial_started = None
            self._turned_away_at = None
            return CLOSED if previous != CLOSED else None

    def record_failure(self, *, trial: bool = False) -> str | None:
        """A hard failure (cannot connect, deadline passed, probe failed).

        Returns the new state if it changed.
        """
        with self._lock:
            now = self.clock()
            previous = self._state
            self._failures += 1
            if trial:
                self._trial_started = None
            if previous == CLOSED:
                if self._failures < self.failure_threshold:
                    return None
                self._opened_at = now
                self._next_trial_at = now + self.half_open_interval_s
                self._state = OPEN
            elif previous == HALF_OPEN and trial:
                self._next_trial_at = now + self.half_open_interval_s
                self._state = OPEN
            else:
                # Already open, or a trial is in flight and will decide: the
                # next trial stays where it was, at most one interval away.
                return None
            return self._state if self._state != previous else None

    def abandon_trial(self) -> None:
        """A trial ended without a verdict (e.g. the app's own error): let the next one go."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._state = OPEN
                self._trial_started = None
                self._next_trial_at = self.clock()

    def reset(self) -> None:
        """Closed, no history (a forked child starts here, with a fresh lock)."""
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = None
        self._next_trial_at = 0.0
        self._trial_started = None
        self._turned_away_at = None
