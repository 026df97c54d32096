"""Graceful stop of the schedulers when the process exits.

On SIGTERM (Render sends SIGKILL 30 s later) a gunicorn worker leaves its
request loop and the interpreter begins to exit. Before anything else of the
exit runs, :meth:`GracefulStop.drain`:

1. stops starting new runs (the supervisor's gate closes; a run already
   queued in an executor is reported ``missed`` instead of started);
2. waits for the runs in progress, up to ``OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S``;
3. ends the spans of runs still going with an error status, and lets the
   interpreter exit without them;
4. shuts the schedulers down and gives up the leader lock (a standby process
   of another instance, or a new worker, takes over at once);

then the telemetry flush (``OTEL_RENDER_SHUTDOWN_TIMEOUT_S``) exports the
job spans.

Why the hook is ``threading._register_atexit`` and not ``atexit``: since
Python 3.9 the interpreter joins every ``concurrent.futures`` worker thread
(APScheduler's thread pools) *before* ``atexit`` handlers run, without a
deadline: a job that never ends would hold the exit until SIGKILL, and the
flush would never run. Hooks registered with ``threading._register_atexit``
run before that join, in reverse order of registration, so ours (registered
after ``concurrent.futures`` was imported) runs first. The same drain is
registered with :func:`otel_render.lifecycle.before_flush` for an explicit
``lifecycle.shutdown()``; whichever comes first does the work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from otel_render.scheduler.runs import ActiveRun, RunRegistry, abandon
from otel_render.scheduler.supervisor import Supervisor

_logger = logging.getLogger("otel_render.scheduler")


@dataclass
class StopReport:
    """What the drain did."""

    waited_s: float = 0.0
    finished: int = 0
    abandoned: list[str] = field(default_factory=list)
    late_schedulers: list[str] = field(default_factory=list)


class GracefulStop:
    """Drains this process's job runs once, within a deadline."""

    def __init__(self, supervisor: Supervisor, registry: RunRegistry, timeout_s: float) -> None:
        self.supervisor = supervisor
        self.registry = registry
        self.timeout_s = timeout_s
        self.report: StopReport | None = None
        self._lock = threading.Lock()

    def drain(self, deadline: float | None = None) -> StopReport:
        """Stop new runs, wait for running ones until ``deadline`` (monotonic;
        default: now + the configured timeout), then shut the schedulers down."""
        with self._lock:
            if self.report is not None:
                return self.report
            self.report = report = StopReport()
        started = time.monotonic()
        if deadline is None:
            deadline = started + self.timeout_s
        self.supervisor.begin_drain()
        running = self.registry.snapshot()
        if running:
            _logger.info(
                "otel-render: waiting up to %.1f s for %d running job(s) to finish: %s",
                max(0.0, deadline - started),
                len(running),
                ", ".join(sorted({run.key for run in running})),
            )
        idle = self.registry.wait_idle(deadline)
        report.finished = len(running) - (0 if idle else len(self.registry.snapshot()))
        if not idle:
            left = self.registry.abandon_all()
            report.abandoned = sorted(run.key for run in left)
            for run in left:
                abandon(run)
            _let_interpreter_exit_without(left)
            _logger.warning(
                "otel-render: job(s) %s still running after %.1f s (OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S); "
                "exiting without them",
                ", ".join(report.abandoned),
                time.monotonic() - started,
            )
        # Shutting down must not outlast the drain by much, whatever a job store does.
        report.late_schedulers = self.supervisor.shutdown_schedulers(max(deadline, time.monotonic()) + 1.0)
        self.supervisor.release_leadership()
        report.waited_s = time.monotonic() - started
        return report

    def at_interpreter_exit(self) -> None:
        if self.supervisor.enabled:
            self.drain()

    def before_flush(self, deadline: float) -> None:
        if self.supervisor.enabled:
            self.drain(min(deadline, time.monotonic() + self.timeout_s))

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.report = None


def register_exit_hook(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit before thread pools are joined."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - every supported Python has it
        import atexit  # pylint: disable=import-outside-toplevel

        atexit.register(callback)
        return
    try:
        register(callback)
    except RuntimeError:  # the interpreter is already exiting
        pass


def _let_interpreter_exit_without(runs: list[ActiveRun]) -> None:
    """Stop the interpreter from joining the threads of abandoned runs at exit."""
    try:
        import concurrent.futures.thread as pool_threads  # pylint: disable=import-outside-toplevel

        queues = pool_threads._threads_queues  # pylint: disable=protected-access
        for run in runs:
            queues.pop(run.thread, None)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not detach abandoned job threads", exc_info=True)
