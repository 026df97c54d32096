"""The ``schedulers`` health check: per scheduler, whether it is alive, the last
success of each job and the jobs that are overdue, folded into one
:class:`~otel_render.health.HealthCheckResult`.

- ``unhealthy``: a scheduler failed beyond restart (circuit breaker open, or
  a BlockingScheduler whose loop raised);
- ``degraded``: a scheduler is dead and waiting for its restart, is not
  processing (its loop missed its own wake-up by ``OVERDUE_AFTER_S``), or a
  job's next run time is more than ``OVERDUE_AFTER_S`` in the past;
- ``healthy`` otherwise, including on standby (another process runs the jobs)
  and when the app has no scheduler.

A pure function of :class:`~otel_render.scheduler.control.SchedulerState`
values and the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from otel_render.diagnostics import utc_now_iso
from otel_render.health import DEGRADED, HEALTHY, UNHEALTHY, HealthCheckResult, worst
from otel_render.scheduler.control import STATE_DEAD, STATE_FAILED, STATE_STANDBY, SchedulerState

#: A job (or a scheduler's own loop) this late is reported overdue.
OVERDUE_AFTER_S = 30.0


def evaluate(states: Sequence[SchedulerState], now: float) -> HealthCheckResult:
    """The check's result for ``states`` at unix time ``now``."""
    if not states:
        return HealthCheckResult(HEALTHY, observedValue={}, time=utc_now_iso(now), output="no scheduler started")
    statuses = []
    notes = []
    observed: dict[str, Any] = {}
    for state in states:
        overdue = [job.id for job in state.jobs if job.overdue]
        if state.state == STATE_FAILED:
            status = UNHEALTHY
            notes.append(f"{state.name}: failed ({state.last_error or 'restart limit reached'})")
        elif state.state == STATE_DEAD:
            status = DEGRADED
            notes.append(f"{state.name}: dead, restart pending")
        elif not state.alive or overdue:
            status = DEGRADED
            problems = [] if state.alive else ["not processing jobs"]
            problems += [f"overdue {', '.join(overdue)}"] if overdue else []
            notes.append(f"{state.name}: {'; '.join(problems)}")
        else:
            status = HEALTHY
            if state.state == STATE_STANDBY and state.runner_pid is not None:
                notes.append(f"{state.name}: standby, jobs run in pid {state.runner_pid}")
            else:
                notes.append(f"{state.name}: {state.state}, {len(state.jobs)} job{'s' if len(state.jobs) != 1 else ''}")
        statuses.append(status)
        observed[state.name] = {
            "state": state.state,
            "runner": state.runner,
            "alive": state.alive,
            "restarts": state.restarts,
            "pausedBy": list(state.paused_by),
            "runnerPid": state.runner_pid,
            "jobs": {
                job.id: {
                    "name": job.name,
                    "lastSuccess": utc_now_iso(job.last_success) if job.last_success is not None else None,
                    "nextRunTime": utc_now_iso(job.next_run_time) if job.next_run_time is not None else None,
                    "lastOutcome": job.last_outcome,
                    "running": job.running,
                    "overdue": job.overdue,
                }
                for job in state.jobs
            },
        }
    return HealthCheckResult(
        worst(statuses),
        observedValue=observed,
        observedUnit=None,
        time=utc_now_iso(now),
        output="; ".join(notes),
    )
