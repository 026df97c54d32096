"""One job run: its span, its meters, its error context, and the registry of
runs in progress (for the max-runtime check and the graceful stop).

APScheduler's executors call ``run_job(job, jobstore_alias, run_times,
logger_name)``, which runs the job once per due run time and returns events.
:class:`JobRunTracer` calls the original once per run time, so that each run
is one span:

- a new trace (``job <job>``, kind INTERNAL), current while the job runs, so
  spans and log records made inside the job belong to it;
- attributes ``scheduler.name``, ``job.id``, ``job.name``, ``job.trigger``,
  ``job.scheduled_time`` (ISO 8601, UTC), ``job.lateness`` (s),
  ``job.outcome`` and the job's database statements (``job.db.queries``,
  ``job.db.time``) counted through :mod:`otel_render.request_context`;
- an error: an ``exception`` event and error status (both scrubbed), an error
  context (``source="job"``) in the diagnostics ring, the run counted with
  ``outcome=error``. The scheduler carries on, as APScheduler does.

Run times already past their misfire grace time produce no span (nothing
ran); they count as ``missed``, as do runs that were due when the process
began to shut down. The meters are the ones listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_render import diagnostics, request_context
from otel_render.request_context import WorkRecord
from otel_render.scheduler.control import ManagedScheduler, job_key
from otel_render.scrub import default as scrubber

_logger = logging.getLogger("otel_render.scheduler")

OUTCOME_SUCCESS = "success"
OUTCOME_ERROR = "error"
OUTCOME_MISSED = "missed"
OUTCOME_SKIPPED = "skipped"

# APScheduler's event codes (apscheduler.events), kept here to avoid importing it at module load.
EVENT_JOB_EXECUTED = 2**12
EVENT_JOB_ERROR = 2**13
EVENT_JOB_MISSED = 2**14

DURATION_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
UNKNOWN_SCHEDULER = "unknown"


@dataclass
class ActiveRun:
    """A job run in progress in this process."""

    scheduler: str
    job_id: str
    key: str
    thread: threading.Thread
    started: float  # monotonic
    scheduled: datetime
    trace_id: str
    span: Any
    stall_reported: bool = False
    abandoned: bool = False


@dataclass
class _Begun:
    """What :meth:`JobRunTracer._begin` started and ``_end`` finishes."""

    run: ActiveRun
    token: int  # in the RunRegistry
    work: Any  # the request_context token
    began: float  # perf_counter


class RunRegistry:
    """The runs in progress, with a condition to wait until none is left."""

    def __init__(self) -> None:
        self._runs: dict[int, ActiveRun] = {}
        self._ids = itertools.count()
        self._cond = threading.Condition()

    def add(self, run: ActiveRun) -> int:
        with self._cond:
            token = next(self._ids)
            self._runs[token] = run
            return token

    def finish(self, token: int) -> ActiveRun | None:
        """Remove a run that ended; None when it had been abandoned meanwhile."""
        with self._cond:
            run = self._runs.pop(token, None)
            self._cond.notify_all()
            return run

    def snapshot(self) -> list[ActiveRun]:
        with self._cond:
            return list(self._runs.values())

    def count(self, scheduler: str, job_id: str) -> int:
        with self._cond:
            return sum(1 for run in self._runs.values() if run.scheduler == scheduler and run.job_id == job_id)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no run is left or the monotonic ``deadline``; True when idle."""
        with self._cond:
            while self._runs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def abandon_all(self) -> list[ActiveRun]:
        """Take every run still in progress out of the registry (at exit)."""
        with self._cond:
            runs = list(self._runs.values())
            self._runs.clear()
            self._cond.notify_all()
        for run in runs:
            run.abandoned = True
        return runs

    def after_fork_in_child(self) -> None:
        self._runs = {}
        self._cond = threading.Condition()


class JobRunTracer:
    """Turns each run of a job into a span and meter points (see module docstring)."""

    def __init__(
        self,
        tracer: trace.Tracer,
        meter: Any,
        registry: RunRegistry,
        *,
        resolve: Callable[[Any], ManagedScheduler | None],
        accepting: Callable[[], bool],
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracer = tracer
        self._clock = clock
        self._registry = registry
        self._resolve = resolve
        self._accepting = accepting
        self._wall = wall
        self._last_error: str | None = None
        self.duration = meter.create_histogram(
            "otel_render.scheduler.job.duration",
            unit="s",
            description="Duration of each job run.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        self.runs = meter.create_counter(
            "otel_render.scheduler.job.runs",
            unit="{run}",
            description="Job runs by outcome: success, error, missed, skipped (max_instances reached).",
        )
        self.last_success = meter.create_gauge(
            "otel_render.scheduler.job.last_success",
            unit="s",
            description="Unix time of the job's last successful run.",
        )

    # -- the executors' entry points -----------------------------------------

    def run(
        self, job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str, original: Callable
    ) -> list:
        events: list = []
        for run_time in run_times:
            if not self._accepting():
                events += self._not_started(job, run_time)
                continue
            begun = self._begin(job, run_time)
            if begun is None:
                produced = original(job, jobstore_alias, [run_time], logger_name)
                self._count_events(job, produced)
                events += produced
                continue
            produced = []
            try:
                with trace.use_span(
                    begun.run.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    produced = original(job, jobstore_alias, [run_time], logger_name)
            finally:
                self._end(job, begun, produced)
            events += produced
        return events

    async def run_coroutine(
        self, job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str, original: Callable
    ) -> list:
        """:meth:`run` for coroutine jobs (``run_coroutine_job``)."""
        events: list = []
        for run_time in run_times:
            if not self._accepting():
                events += self._not_started(job, run_time)
                continue
            begun = self._begin(job, run_time)
            if begun is None:
                produced = await original(job, jobstore_alias, [run_time], logger_name)
                self._count_events(job, produced)
                events += produced
                continue
            produced = []
            try:
                with trace.use_span(
                    begun.run.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    produced = await original(job, jobstore_alias, [run_time], logger_name)
            finally:
                self._end(job, begun, produced)
            events += produced
        return events

    def count_skipped(self, scheduler: Any, job_id: str, run_times: int) -> None:
        """A due run was not started because ``max_instances`` runs were in progress."""
        try:
            control = self._resolve(scheduler)
            name = control.name if control is not None else UNKNOWN_SCHEDULER
            job_name = control.job_names.get(job_id) if control is not None else None
            if job_name is None:
                job = scheduler.get_job(job_id)
                job_name = job.name if job is not None else None
            self.runs.add(
                max(1, run_times),
                {"scheduler.name": name, "job.id": job_key(job_id, job_name), "outcome": OUTCOME_SKIPPED},
            )
        except Exception:  # pylint: disable=broad-except
            self._log_once("could not count a skipped job run")

    # -- one run ----------------------------------------------------------------

    def _begin(self, job: Any, run_time: datetime) -> _Begun | None:
        """Start a run's span and bookkeeping; None when the run gets none: its
        run time is past the misfire grace time (the original reports it
        missed), or tracing failed (the job runs untraced)."""
        try:
            grace = job.misfire_grace_time
            if grace is not None and datetime.now(timezone.utc) - run_time > timedelta(seconds=grace):
                return None
            control = self._resolve(job._scheduler)  # pylint: disable=protected-access
            scheduler_name = control.name if control is not None else UNKNOWN_SCHEDULER
            if control is not None:
                control.job_names[job.id] = job.name
            key = job_key(job.id, job.name)
            lateness = max(0.0, self._wall() - run_time.timestamp())
            attributes = {
                "scheduler.name": scheduler_name,
                "job.id": job.id,
                "job.name": job.name,
                "job.trigger": str(job.trigger),
                "job.scheduled_time": run_time.astimezone(timezone.utc).isoformat(),
                "job.lateness": lateness,
            }
            func_ref = getattr(job, "func_ref", None)
            if func_ref:
                attributes["code.function.name"] = func_ref
            span = self._tracer.start_span(
                f"job {key}", context=otel_context.Context(), kind=SpanKind.INTERNAL, attributes=attributes
            )
            trace_id = format(span.get_span_context().trace_id, "032x") if span.get_span_context().is_valid else None
            run = ActiveRun(
                scheduler=scheduler_name,
                job_id=job.id,
                key=key,
                thread=threading.current_thread(),
                started=self._clock(),
                scheduled=run_time,
                trace_id=trace_id or "",
                span=span,
            )
            token = self._registry.add(run)
            work = request_context.begin(WorkRecord(kind="job", correlation_id=trace_id))
            return _Begun(run, token, work, time.perf_counter())
        except Exception:  # pylint: disable=broad-except
            self._log_once("could not start tracing a job run; the job runs untraced")
            return None

    def _end(self, job: Any, begun: _Begun, events: list) -> None:
        duration = time.perf_counter() - begun.began
        run = begun.run
        try:
            record = request_context.current()
            request_context.end(begun.work)
            outcome, error = _outcome(events)
            still_ours = self._registry.finish(begun.token) is not None
            control = self._resolve(job._scheduler)  # pylint: disable=protected-access
            attributes = {"scheduler.name": run.scheduler, "job.id": run.key, "outcome": outcome}
            self.runs.add(1, attributes)
            if outcome != OUTCOME_MISSED:
                self.duration.record(duration, attributes)
            if control is not None:
                control.last_outcome[job.id] = outcome
            if outcome == OUTCOME_SUCCESS:
                now = self._wall()
                self.last_success.set(now, {"scheduler.name": run.scheduler, "job.id": run.key})
                if control is not None:
                    control.last_success[job.id] = now
            if error is not None:
                diagnostics.capture_error_context(
                    error, correlation_id=run.trace_id or None, trace_id=run.trace_id or None, source="job"
                )
            if not still_ours:
                return  # abandoned at exit: its span was ended then
            span = run.span
            span.set_attribute("job.outcome", outcome)
            if record is not None:
                span.set_attribute("job.db.queries", record.db_queries)
                span.set_attribute("job.db.time", record.db_time_s)
            if error is not None:
                _record_error(span, error)
            span.end()
        except Exception:  # pylint: disable=broad-except
            self._log_once("could not finish tracing a job run")

    def _not_started(self, job: Any, run_time: datetime) -> list:
        from apscheduler.events import JobExecutionEvent  # pylint: disable=import-outside-toplevel

        control = self._resolve(job._scheduler)  # pylint: disable=protected-access
        name = control.name if control is not None else UNKNOWN_SCHEDULER
        self.runs.add(1, {"scheduler.name": name, "job.id": job_key(job.id, job.name), "outcome": OUTCOME_MISSED})
        _logger.info(
            "otel-render: job %r not started at %s: the process is shutting down", job.id, run_time.isoformat()
        )
        return [JobExecutionEvent(EVENT_JOB_MISSED, job.id, job._jobstore_alias, run_time)]  # pylint: disable=protected-access

    def _count_events(self, job: Any, events: list) -> None:
        try:
            control = self._resolve(job._scheduler)  # pylint: disable=protected-access
            name = control.name if control is not None else UNKNOWN_SCHEDULER
            for event in events:
                outcome, _ = _outcome([event])
                self.runs.add(1, {"scheduler.name": name, "job.id": job_key(job.id, job.name), "outcome": outcome})
        except Exception:  # pylint: disable=broad-except
            self._log_once("could not count a job run")

    def _log_once(self, message: str) -> None:
        if message != self._last_error:
            self._last_error = message
            _logger.warning("otel-render: %s", message, exc_info=True)


def abandon(run: ActiveRun) -> None:
    """End the span of a run still in progress when the process exits."""
    try:
        run.span.set_attribute("job.outcome", "abandoned")
        run.span.set_status(Status(StatusCode.ERROR, "still running when the process exited"))
        run.span.end()
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not end an abandoned job span", exc_info=True)


def _outcome(events: list) -> tuple[str, BaseException | None]:
    for event in events:
        code = getattr(event, "code", 0)
        if code == EVENT_JOB_ERROR:
            return OUTCOME_ERROR, getattr(event, "exception", None)
        if code == EVENT_JOB_MISSED:
            return OUTCOME_MISSED, None
    return OUTCOME_SUCCESS, None


def _record_error(span: Any, error: BaseException) -> None:
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    message = scrubber.text(str(error))[: diagnostics.MAX_MESSAGE_CHARS]
    span.add_event(
        "exception",
        {
            "exception.type": error_type,
            "exception.message": message,
            "exception.stacktrace": diagnostics.format_stack(error),
        },
    )
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"[:500]))
