"""The background probe: a cheap statement against each database, run by one
daemon thread per process, never on a request's path.

While a database is up the probe runs every ``OTEL_RENDER_DB_PROBE_INTERVAL_S``
(0: only while it is down), so an idle app still notices an outage and the
health check has a fresh latency. Once a database is down it retries with
exponential backoff and full jitter, as the seed specifies: the n-th retry
waits a uniformly random time in ``[0, min(16, 2**n)]`` s (ceilings 1, 2, 4,
8, 16, 16, ... s). Full jitter spreads the probes of many workers and
instances over the window instead of having them all knock at once when the
database comes back. Requests do not wait for the probe: the circuit
breaker's half-open trial lets traffic resume within about a second whatever
the backoff is at.

While a database's circuit is open, this thread also runs the breaker's
half-open trial once per ``OTEL_RENDER_DB_HALF_OPEN_S`` (see
:mod:`otel_render.db.circuit`): that trial, not the backoff, is what brings
service back within about a second; requests keep failing fast meanwhile.

A probe success marks the database up and closes its breaker; a failure marks
it down and opens it. :func:`request_probe` (for the recovery module) makes
every database's next probe due now. :class:`ProbeSchedule` and
:func:`backoff_delay` are pure, with the clock and the random source injected.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from otel_render import lifecycle
from otel_render.db import status as db_status
from otel_render.db.status import DOWN, Database

_logger = logging.getLogger("otel_render.db")

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 16.0
TICK_S = 0.25


def backoff_ceiling(attempt: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """The longest wait before retry number ``attempt`` (0-based): 1, 2, 4, 8, 16, 16, ..."""
    if attempt >= 64:
        return cap_s
    return min(cap_s, base_s * 2**attempt)


def backoff_delay(
    attempt: int,
    rng: Callable[[], float],
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Full jitter: ``rng()`` (in [0, 1)) times the ceiling of ``attempt``."""
    return rng() * backoff_ceiling(attempt, base_s, cap_s)


@dataclass
class ProbeSchedule:
    """When one database is probed next. Pure: times come from the caller."""

    interval_up_s: float
    rng: Callable[[], float] = random.random
    next_at: float = 0.0
    attempt: int = 0  # retries since the database went down
    retrying: bool = False

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def went_down(self, now: float) -> None:
        """Start the backoff schedule (once per outage)."""
        if not self.retrying:
            self.retrying = True
            self.attempt = 0
            self.next_at = now + backoff_delay(0, self.rng)

    def probed(self, ok: bool, now: float) -> float:
        """Record a probe's outcome; returns the delay until the next one."""
        if ok:
            self.retrying = False
            self.attempt = 0
            delay = self.interval_up_s if self.interval_up_s > 0 else math.inf
        else:
            self.retrying = True
            delay = backoff_delay(self.attempt, self.rng)
            self.attempt += 1
        self.next_at = now + delay
        return delay

    def run_now(self, now: float) -> None:
        self.next_at = now


Probe = Callable[[Database], float]
"""Runs one probe against a database and returns its latency in seconds; raises on failure."""


class ProbeLoop(lifecycle.BackgroundLoop):
    """Probes every tracked database when its schedule says so."""

    def __init__(
        self,
        probe: Probe,
        *,
        interval_up_s: float,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        should_run: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__("db-probe", TICK_S)
        self.probe = probe
        self.interval_up_s = interval_up_s
        self.clock = clock
        self.rng = rng
        self.should_run = should_run
        self.schedules: dict[str, ProbeSchedule] = {}
        self._lock = threading.Lock()

    def schedule(self, database: Database) -> ProbeSchedule:
        with self._lock:
            schedule = self.schedules.get(database.name)
            if schedule is None:
                first = self.interval_up_s if self.interval_up_s > 0 else math.inf
                schedule = ProbeSchedule(self.interval_up_s, self.rng, next_at=self.clock() + first)
                self.schedules[database.name] = schedule
            return schedule

    def run_now(self) -> None:
        now = self.clock()
        with self._lock:
            schedules = list(self.schedules.values())
        for schedule in schedules:
            schedule.run_now(now)

    def tick(self) -> None:
        if not self.should_run():
            return
        for database in db_status.databases():
            schedule = self.schedule(database)
            if database.breaker.take_trial():
                self.probe_once(database, schedule, trial=True)
                continue
            now = self.clock()
            if database.tracker.status == DOWN:
                schedule.went_down(now)
            if schedule.due(now):
                self.probe_once(database, schedule)

    def probe_once(self, database: Database, schedule: ProbeSchedule, *, trial: bool = False) -> bool:
        """Probe ``database`` once (as the circuit's trial when ``trial``) and record the outcome."""
        try:
            latency = self.probe(database)
        except Exception as exc:  # pylint: disable=broad-except
            error = db_status.error_name(exc)
            database.tracker.record_probe(None)
            went_down = database.tracker.record_failure(error)
            database.breaker.record_failure(trial=trial)
            delay = schedule.probed(False, self.clock())
            if went_down:
                _logger.warning("otel-render: database %s is down (%s); probing again with backoff", database.name, error)
            else:
                _logger.debug("otel-render: probe of %s failed (%s); next in %.1f s", database.name, error, delay)
            return False
        was_down = database.tracker.status == DOWN
        database.tracker.record_probe(latency)
        database.tracker.record_success()
        closed = database.breaker.record_success()
        schedule.probed(True, self.clock())
        if was_down or closed:
            _logger.warning(
                "otel-render: database %s answers again (probe %.1f ms)%s",
                database.name,
                latency * 1000,
                "; circuit closed" if closed else "",
            )
        return True

    def reset_after_fork(self) -> None:
        super().reset_after_fork()
        self._lock = threading.Lock()
        self.schedules = {}


_loop: ProbeLoop | None = None


def install(loop: ProbeLoop) -> ProbeLoop:
    """Make ``loop`` the process's probe (owned by :mod:`otel_render.lifecycle`)."""
    global _loop
    _loop = loop
    lifecycle.add_loop(loop)
    return loop


def current() -> ProbeLoop | None:
    return _loop


def request_probe() -> bool:
    """Probe every database at the next tick (within a quarter second).

    For the recovery module. Returns False when no probe runs in this process.
    """
    loop = _loop
    if loop is None:
        return False
    loop.run_now()
    return True
