"""APScheduler 3.x: jobs as traces and meters, a supervisor that restarts dead
schedulers, staggered start, graceful stop, and one runner per instance.

Nothing to call for the common case: ``opentelemetry-instrument`` loads
:class:`~otel_render.scheduler.instrumentor.APSchedulerInstrumentor` (entry
point ``apscheduler``) before the app starts its schedulers.

Where the jobs run (``OTEL_RENDER_SCHEDULER_LEADER``, on by default): one
process per instance, elected with a lock in the instance directory. Under
gunicorn that is one worker, never the master, with and without
``--preload``; the other workers hold their schedulers on standby and one of
them takes over within ``OTEL_RENDER_SCHEDULER_LEADER_POLL_S`` when the
runner dies. See :mod:`otel_render.scheduler.supervisor` for why.

The API below is what the recovery module (and an app) may call; each acts on
the schedulers of *this* process:

- :func:`states` — every scheduler with its state, role and jobs;
- :func:`pause_all` / :func:`resume_all` — pause on behalf of an owner, and
  resume only what that owner paused;
- :func:`restart` — restart a named scheduler (fresh executors and thread),
  closing its circuit breaker;
- :func:`stop` — stop starting new runs and shut down gracefully (done at
  exit already);
- :func:`set_scheduler_name` — name a scheduler before it starts (default:
  its class name, ``BackgroundScheduler-2`` for the second one).
"""

from __future__ import annotations

from typing import Any

from otel_render.scheduler.control import ALL_STATES, JobState, SchedulerState
from otel_render.scheduler.shutdown import StopReport

__all__ = [
    "ALL_STATES",
    "JobState",
    "SchedulerState",
    "StopReport",
    "pause_all",
    "restart",
    "resume_all",
    "set_scheduler_name",
    "states",
    "stop",
]


def _supervisor() -> Any:
    from otel_render.scheduler.instrumentor import current_supervisor  # pylint: disable=import-outside-toplevel

    return current_supervisor()


def states() -> list[SchedulerState]:
    """The schedulers of this process (empty when APScheduler is not instrumented)."""
    supervisor = _supervisor()
    return supervisor.states() if supervisor is not None else []


def pause_all(owner: str) -> list[str]:
    """Pause every running scheduler on behalf of ``owner``; returns the names
    this call paused. A scheduler the app paused is left to the app."""
    supervisor = _supervisor()
    return supervisor.pause_all(owner) if supervisor is not None else []


def resume_all(owner: str) -> list[str]:
    """Resume the schedulers ``owner`` paused (and no other owner still holds)."""
    supervisor = _supervisor()
    return supervisor.resume_all(owner) if supervisor is not None else []


def restart(name: str) -> bool:
    """Restart scheduler ``name`` if this process runs it; True when it is
    running afterwards."""
    supervisor = _supervisor()
    return supervisor.restart(name) if supervisor is not None else False


def stop(timeout_s: float | None = None) -> StopReport:
    """Stop starting new runs, wait up to ``timeout_s`` (default
    ``OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S``) for running ones, then shut
    the schedulers down and give up the leader lock. Once per process."""
    import time  # pylint: disable=import-outside-toplevel

    from otel_render.scheduler.instrumentor import current_stop  # pylint: disable=import-outside-toplevel

    graceful = current_stop()
    if graceful is None:
        return StopReport()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    return graceful.drain(deadline)


def set_scheduler_name(scheduler: Any, name: str) -> None:
    """Name ``scheduler`` in metrics, spans and health (call before ``start()``;
    use the same name in every process)."""
    scheduler._otel_render_name = str(name)  # pylint: disable=protected-access
