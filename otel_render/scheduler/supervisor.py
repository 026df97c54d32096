"""The scheduler supervisor: decides which schedulers this process runs, starts
them staggered, restarts the ones whose thread died, reports long runs, and
answers the recovery API.

Where jobs run
--------------
With ``OTEL_RENDER_SCHEDULER_LEADER=true`` (the default) one process of the
instance runs the jobs, elected with a lock in the instance directory
(:mod:`otel_render.scheduler.leader`). Under gunicorn that is one *worker*,
never the master, with and without ``--preload``:

- without ``--preload`` every worker imports the app and starts its
  schedulers; the first to take the lock runs them, the others hold theirs
  on standby (started, no thread);
- with ``--preload`` the master imports the app: its schedulers are started
  without a thread (the master never runs jobs: a job thread in the master
  would delay its signal handling, hold database connections every forked
  worker inherits, and hold locks at the moment of each fork). Each worker
  inherits them; the worker that takes the lock gives them fresh executors
  and a thread. The inherited thread-less schedulers of the other workers are
  standby, not deaths to repair.

When the runner dies, its lock goes with it and a standby process takes over
within ``OTEL_RENDER_SCHEDULER_LEADER_POLL_S``, continuing after the
schedule the runner had reached. With the leader lock off, every process
that starts a scheduler runs it (under ``--preload``: the master, as
APScheduler does on its own).

Supervision
-----------
:meth:`Supervisor.tick` runs on a background loop: it applies the election,
activates waiting schedulers one ``OTEL_RENDER_SCHEDULER_STAGGER_S`` apart,
finds a running BackgroundScheduler whose thread is gone (an exception that
escaped its job store kills the thread while ``scheduler.running`` stays
True) and revives it with fresh executors, under the backoff and circuit
breaker of :class:`~otel_render.scheduler.policy.RestartPolicy`, and captures
the stack of any job running past ``OTEL_RENDER_SCHEDULER_MAX_RUNTIME_S``.
The clock is injected; tests call ``tick()`` themselves.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from opentelemetry.metrics import Observation

from otel_render import diagnostics, instance
from otel_render.config import Settings
from otel_render.diagnostics import ActionRecord, StallRecord, utc_now_iso
from otel_render.health import HealthCheckResult
from otel_render.scheduler import health as scheduler_health
from otel_render.scheduler import leader as leadership
from otel_render.scheduler.control import (
    ALL_STATES,
    APS_PAUSED,
    APS_RUNNING,
    APS_STOPPED,
    KIND_BACKGROUND,
    KIND_BLOCKING,
    MODE_ACTIVE,
    MODE_WAITING,
    JobState,
    ManagedScheduler,
    SchedulerState,
    derive_state,
    kind_of,
    main_thread_alive,
    memory_jobs,
    prepare_for_activation,
    progress_snapshot,
    revive,
)
from otel_render.scheduler.policy import GIVE_UP, RESTART, PauseLedger, RestartPolicy, stagger_wait
from otel_render.scheduler.runs import RunRegistry
from otel_render.scrub import default as scrubber

_logger = logging.getLogger("otel_render.scheduler")

RULE = "scheduler.supervisor"
ROLE_MASTER = "master"
ROLE_WORKER = "worker"

_ELIGIBLE = "eligible"
_NOT_ELIGIBLE = "not eligible"
_UNSURE = "unsure"

#: How the supervisor finds out which gunicorn process this is: ``(role, master_pid)``.
RoleSource = Callable[[], "tuple[str | None, int | None]"]


def gunicorn_role() -> tuple[str | None, int | None]:
    from otel_render.web import gunicorn  # pylint: disable=import-outside-toplevel

    role, _ = gunicorn.identity()
    return role, gunicorn.master_pid()


def _gunicorn_imported() -> bool:
    return "gunicorn.arbiter" in sys.modules


class Supervisor:
    """Per-process state and decisions for every scheduler the app started."""

    def __init__(
        self,
        settings: Settings,
        *,
        meter: Any,
        registry: RunRegistry,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        role: RoleSource = gunicorn_role,
        gunicorn_imported: Callable[[], bool] = _gunicorn_imported,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.wall = wall
        self.policy = RestartPolicy(
            limit=settings.scheduler_restart_limit,
            window_s=settings.scheduler_restart_window_s,
            backoff_s=settings.scheduler_restart_backoff_s,
        )
        self.ledger = PauseLedger()
        self.leader_on = settings.scheduler_leader
        self.draining = False
        self.enabled = True
        self.on_skipped: Callable[[Any, str, int], None] | None = None
        self._role = role
        self._gunicorn_imported = gunicorn_imported
        # Built at the first election, when the gunicorn master's pid (which
        # names the instance directory) is known.
        self._election: leadership.Election | None = None
        self._progress: leadership.ProgressStore | None = None
        self._lock_holder: Callable[[], int | None] | None = None
        self._controls: list[ManagedScheduler] = []
        self._names: set[str] = set()
        self._lock = threading.RLock()
        self._last_start: float | None = None
        self._ticked = False
        self._announced: str | None = None
        self.restart_counter = meter.create_counter(
            "otel_render.scheduler.restarts",
            unit="{restart}",
            description="Supervisor restarts of a dead scheduler, by outcome (restarted, failed, gave_up).",
        )
        meter.create_observable_gauge(
            "otel_render.scheduler.state",
            callbacks=[self._observe_states],
            unit="1",
            description="1 for the scheduler's current state, 0 for the others.",
        )

    # -- adoption ---------------------------------------------------------------

    def control_of(self, scheduler: Any) -> ManagedScheduler | None:
        """The record of ``scheduler``; one started before instrumentation is
        adopted when first seen running a job (supervised, never elected)."""
        control = scheduler.__dict__.get("_otel_render_control") if scheduler is not None else None
        if control is not None or scheduler is None or not self.enabled:
            return control
        control = self.adopt(scheduler)
        if scheduler.state != APS_STOPPED and control.mode != MODE_ACTIVE:
            control.mode = MODE_ACTIVE
            control.elected = False
        return control

    def adopt(self, scheduler: Any) -> ManagedScheduler:
        """Register ``scheduler`` (idempotent) under a name stable across workers."""
        with self._lock:
            control = scheduler.__dict__.get("_otel_render_control")
            if control is not None:
                return control
            name = self._unique_name(scheduler.__dict__.get("_otel_render_name") or type(scheduler).__name__)
            control = ManagedScheduler(
                name=name, ref=weakref.ref(scheduler), kind=kind_of(scheduler), order=len(self._controls)
            )
            scheduler._otel_render_control = control  # pylint: disable=protected-access
            self._controls.append(control)
        control.listener = self._skipped_listener(control)
        try:
            from apscheduler.events import EVENT_JOB_MAX_INSTANCES  # pylint: disable=import-outside-toplevel

            scheduler.add_listener(control.listener, EVENT_JOB_MAX_INSTANCES)
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: could not listen to %s", name, exc_info=True)
        return control

    def _skipped_listener(self, control: ManagedScheduler) -> Callable[[Any], None]:
        """Counts runs APScheduler did not start because ``max_instances`` runs were in progress."""

        def on_max_instances(event: Any) -> None:
            scheduler = control.scheduler
            if self.on_skipped is not None and scheduler is not None:
                self.on_skipped(scheduler, event.job_id, len(event.scheduled_run_times or ()))

        return on_max_instances

    def _unique_name(self, wanted: str) -> str:
        name, number = wanted, 1
        while name in self._names:
            number += 1
            name = f"{wanted}-{number}"
        self._names.add(name)
        return name

    def controls(self) -> list[ManagedScheduler]:
        with self._lock:
            return [control for control in self._controls if control.scheduler is not None]

    def forget_all(self) -> None:
        """Drop every record and listener (uninstrument)."""
        with self._lock:
            controls, self._controls = self._controls, []
            self._names = set()
        for control in controls:
            scheduler = control.scheduler
            if scheduler is None:
                continue
            scheduler.__dict__.pop("_otel_render_control", None)
            if control.listener is not None:
                try:
                    scheduler.remove_listener(control.listener)
                except Exception:  # pylint: disable=broad-except
                    _logger.debug("otel-render: listener of %s already gone", control.name, exc_info=True)

    # -- start, gate, loop --------------------------------------------------------

    def decide_start(self, control: ManagedScheduler) -> bool:
        """Called when the app starts a scheduler: True when this process runs
        it from now on, False when it holds it waiting (standby or stagger)."""
        now = self.clock()
        with self._lock:
            control.failed = False
            control.died_at = None
            control.last_error = None
            control.started_here = True
            if self.draining or not self.enabled:
                control.mode = MODE_WAITING
                return False
            if self.leader_on and control.elected:
                eligibility = self._eligibility()
                leader = eligibility == _ELIGIBLE and self._get_election().try_now(now)
                self._announce(leader, eligibility)
                if not leader:
                    control.mode = MODE_WAITING
                    return False
            if stagger_wait(self._last_start, now, self.settings.scheduler_stagger_s) > 0:
                control.mode = MODE_WAITING
                return False
            control.mode = MODE_ACTIVE
            control.activated_at = now
            self._last_start = now
            return True

    def after_live_start(self, control: ManagedScheduler) -> None:
        """The scheduler started live: record where its schedule stands."""
        self._write_progress(control)

    def accepting(self) -> bool:
        """Whether new job runs may start (False once the process is stopping)."""
        return not self.draining

    def gate(self, control: ManagedScheduler) -> bool:
        """Whether the scheduler may process due jobs in this process now."""
        return control.mode == MODE_ACTIVE and not self.draining and not control.failed

    def after_processing(self, control: ManagedScheduler, wait_seconds: float | None) -> None:
        wall = self.wall()
        control.last_processed = wall
        control.next_wakeup = wall + wait_seconds if wait_seconds is not None else None
        if control.mode == MODE_ACTIVE:
            self._write_progress(control)

    def main_loop_died(self, scheduler: Any, error: BaseException) -> None:
        """The scheduler's main loop raised: remember why (the tick restarts it)."""
        control = scheduler.__dict__.get("_otel_render_control")
        if control is None:
            return
        control.last_error = f"{type(error).__name__}: {scrubber.text(str(error))[:300]}"
        control.died_at = self.clock()
        diagnostics.capture_error_context(error, correlation_id=None, trace_id=None, source="scheduler")
        _logger.error(
            "otel-render: scheduler %r stopped processing jobs: its loop raised %s",
            control.name,
            control.last_error,
        )
        if control.kind == KIND_BLOCKING:
            # The app's own thread ran this loop and got the exception: nothing to revive.
            control.failed = True

    def tick(self) -> None:
        """One round of supervision (see the module docstring)."""
        if not self.enabled:
            return
        now = self.clock()
        with self._lock:
            self._ticked = True
            if self.draining:
                return
            controls = [c for c in self._controls if c.scheduler is not None]
            leader = self._leadership(now, controls)
            for control in controls:
                scheduler = control.scheduler
                if scheduler is None or scheduler.state == APS_STOPPED or control.failed:
                    continue
                wants = leader if (self.leader_on and control.elected) else control.started_here
                if wants and control.mode != MODE_ACTIVE:
                    if stagger_wait(self._last_start, now, self.settings.scheduler_stagger_s) == 0:
                        self._activate(control, now)
                elif not wants and control.mode == MODE_ACTIVE:
                    self._demote(control)
                if control.mode == MODE_ACTIVE and control.kind == KIND_BACKGROUND:
                    self._check_alive(control, now)
        self._check_runtimes(now)

    # -- election ---------------------------------------------------------------

    def _get_election(self) -> leadership.Election:
        if self._election is None:
            directory = instance.directory(self.settings)
            file_lock = leadership.InstanceLock(directory)
            locks: list[leadership.LeaderLock] = [file_lock]
            if self.settings.scheduler_leader_database_url:
                locks.append(
                    leadership.AdvisoryLock(self.settings.scheduler_leader_database_url, _service_key(self.settings))
                )
            self._election = leadership.Election(locks, self.settings.scheduler_leader_poll_s)
            self._progress = leadership.ProgressStore(directory, directory.name)
            self._lock_holder = lambda: record.pid if (record := file_lock.holder()) else None
        return self._election

    def _eligibility(self) -> str:
        role, _ = self._role()
        if role == ROLE_MASTER:
            return _NOT_ELIGIBLE
        if role == ROLE_WORKER:
            return _ELIGIBLE
        if self._gunicorn_imported() and not self._ticked:
            # gunicorn is loaded but this process does not know its role yet
            # (the app configured otel-render itself, during --preload's
            # import in the master?): decide at the first tick, not before fork.
            return _UNSURE
        return _ELIGIBLE

    def _leadership(self, now: float, controls: list[ManagedScheduler]) -> bool:
        if not self.leader_on:
            return False
        wanted = any(
            control.elected and control.scheduler is not None and control.scheduler.state != APS_STOPPED
            for control in controls
        )
        if not wanted:
            return self._election.leader if self._election is not None else False
        eligibility = self._eligibility()
        if eligibility != _ELIGIBLE:
            self._announce(False, eligibility)
            return False
        leader = self._get_election().tick(now)
        self._announce(leader, eligibility)
        return leader

    def _announce(self, leader: bool, eligibility: str) -> None:
        """Log each change of this process's part, once."""
        if leader:
            message = "runner"
        elif eligibility == _NOT_ELIGIBLE:
            message = "master"
        elif eligibility == _UNSURE:
            return
        else:
            message = "standby"
        if message == self._announced:
            return
        self._announced = message
        election = self._election
        where = election.locks[0].describe() if election is not None else "the instance lock"
        if message == "runner":
            _logger.info(
                "otel-render: pid %d runs the scheduled jobs of this instance (it holds %s)",
                os.getpid(),
                " and ".join(lock.describe() for lock in election.locks) if election else where,
            )
        elif message == "master":
            _logger.info(
                "otel-render: the gunicorn master holds its schedulers without running them; one worker "
                "will run the jobs (OTEL_RENDER_SCHEDULER_LEADER=false runs them here instead)"
            )
        else:
            holder = self._lock_holder() if self._lock_holder is not None else None
            _logger.info(
                "otel-render: pid %d holds its schedulers on standby; %s runs the jobs (%s). "
                "OTEL_RENDER_SCHEDULER_LEADER=false runs them in every process",
                os.getpid(),
                f"pid {holder}" if holder else "another process",
                where,
            )

    def release_leadership(self) -> None:
        if self._election is not None:
            self._election.release()

    # -- activation, demotion, restarts ------------------------------------------

    def _activate(self, control: ManagedScheduler, now: float) -> None:
        scheduler = control.scheduler
        record = None
        if self.leader_on and control.elected and self._progress is not None:
            record = self._progress.read(control.name)
        try:
            moved = prepare_for_activation(scheduler, record, datetime.now(timezone.utc))
            control.mode = MODE_ACTIVE
            control.activated_at = now
            self._last_start = now
            if control.kind == KIND_BACKGROUND and not main_thread_alive(scheduler):
                revive(scheduler, inherited=control.inherited)
                control.inherited = False
            else:
                scheduler.wakeup()
        except Exception as exc:  # pylint: disable=broad-except
            control.mode = MODE_WAITING
            control.last_error = f"{type(exc).__name__}: {scrubber.text(str(exc))[:300]}"
            _logger.warning(
                "otel-render: could not start scheduler %r here: %s", control.name, control.last_error, exc_info=True
            )
            return
        self._write_progress(control)
        _logger.info(
            "otel-render: scheduler %r runs its jobs in pid %d%s",
            control.name,
            os.getpid(),
            f" (continuing after the previous runner; {moved} job(s) rescheduled)"
            if record is not None and moved
            else "",
        )

    def _demote(self, control: ManagedScheduler) -> None:
        control.mode = MODE_WAITING
        _logger.warning(
            "otel-render: pid %d lost the scheduler lock; scheduler %r stops running jobs here",
            os.getpid(),
            control.name,
        )
        try:
            control.scheduler.wakeup()
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: could not wake scheduler %s", control.name, exc_info=True)

    def _check_alive(self, control: ManagedScheduler, now: float) -> None:
        scheduler = control.scheduler
        if main_thread_alive(scheduler):
            control.died_at = None
            return
        if control.died_at is None:
            control.died_at = now
            _logger.error(
                "otel-render: scheduler %r says it is running but its thread is gone (%s)",
                control.name,
                control.last_error or "no exception recorded",
            )
        decision = self.policy.decide(control.restarts, control.died_at, now)
        if decision.action == GIVE_UP:
            control.failed = True
            self._count_restart(control, "gave_up", "escalated")
            _logger.error(
                "otel-render: scheduler %r died %d times within %.0f s; not restarting it again "
                "(OTEL_RENDER_SCHEDULER_RESTART_LIMIT); it is reported failed",
                control.name,
                len(self.policy.recent(control.restarts, now)),
                self.policy.window_s,
            )
        elif decision.action == RESTART:
            self._restart(control, now)

    def _restart(self, control: ManagedScheduler, now: float) -> bool:
        control.restarts.append(now)
        control.restarts_total += 1
        try:
            revive(control.scheduler, inherited=control.inherited)
        except Exception as exc:  # pylint: disable=broad-except
            control.died_at = now
            self._count_restart(control, "failed", "failed", error=f"{type(exc).__name__}: {exc}")
            _logger.warning("otel-render: could not restart scheduler %r", control.name, exc_info=True)
            return False
        control.inherited = False
        control.died_at = None
        self._count_restart(control, "restarted", "done")
        _logger.warning(
            "otel-render: restarted scheduler %r with fresh executors (restart %d of %d allowed within %.0f s)",
            control.name,
            len(self.policy.recent(control.restarts, now)),
            self.policy.limit,
            self.policy.window_s,
        )
        return True

    def _count_restart(
        self, control: ManagedScheduler, outcome: str, action_outcome: str, error: str | None = None
    ) -> None:
        self.restart_counter.add(1, {"scheduler.name": control.name, "outcome": outcome})
        detail: dict[str, Any] = {"scheduler": control.name, "restarts": control.restarts_total}
        if control.last_error:
            detail["cause"] = control.last_error
        if error:
            detail["error"] = scrubber.text(error)[:300]
        diagnostics.actions.append(
            ActionRecord(
                timestamp=utc_now_iso(self.wall()),
                rule=RULE,
                action="restart_scheduler",
                outcome=action_outcome,
                detail=detail,
            )
        )

    def _check_runtimes(self, now: float) -> None:
        limit = self.settings.scheduler_max_runtime_s
        if limit <= 0:
            return
        for run in self.registry.snapshot():
            running = now - run.started
            if run.stall_reported or running < limit:
                continue
            run.stall_reported = True
            stack = diagnostics.thread_stack(run.thread.ident) if run.thread.ident is not None else None
            diagnostics.stalls.append(
                StallRecord(
                    kind="job",
                    name=run.key,
                    correlationId=run.trace_id or None,
                    traceId=run.trace_id or None,
                    timestamp=utc_now_iso(self.wall()),
                    running_s=round(running, 3),
                    limit_s=limit,
                    thread=run.thread.name,
                    stack=stack or "",
                )
            )
            try:
                run.span.add_event(
                    "otel_render.job.max_runtime_exceeded", {"job.running": running, "job.max_runtime": limit}
                )
            except Exception:  # pylint: disable=broad-except
                _logger.debug("otel-render: could not mark the span of a long job run", exc_info=True)
            _logger.warning(
                "otel-render: job %r of scheduler %r has run for %.0f s (OTEL_RENDER_SCHEDULER_MAX_RUNTIME_S=%g); "
                "its stack is in /api/diagnostics",
                run.key,
                run.scheduler,
                running,
                limit,
            )

    def _write_progress(self, control: ManagedScheduler) -> None:
        if not (self.leader_on and control.elected) or self._progress is None:
            return
        try:
            self._progress.write(control.name, progress_snapshot(control.scheduler))
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: could not write the scheduler progress record", exc_info=True)

    # -- the API the recovery module calls -------------------------------------------

    def states(self) -> list[SchedulerState]:
        now = self.wall()
        holder = None
        if self.leader_on and self._lock_holder is not None:
            try:
                holder = self._lock_holder()
            except Exception:  # pylint: disable=broad-except
                holder = None
        result = []
        for control in self.controls():
            scheduler = control.scheduler
            alive_thread = main_thread_alive(scheduler)
            state = derive_state(
                aps_state=scheduler.state,
                mode=control.mode,
                kind=control.kind,
                failed=control.failed,
                thread_alive=alive_thread,
            )
            runner = control.mode == MODE_ACTIVE and scheduler.state != APS_STOPPED
            stuck = (
                runner
                and scheduler.state == APS_RUNNING
                and control.next_wakeup is not None
                and now - control.next_wakeup > scheduler_health.OVERDUE_AFTER_S
            )
            alive = state not in ("dead", "failed") and not stuck
            result.append(
                SchedulerState(
                    name=control.name,
                    kind=type(scheduler).__name__,
                    state=state,
                    runner=runner,
                    alive=alive,
                    restarts=control.restarts_total,
                    paused_by=tuple(sorted(self.ledger.holders(control.name))),
                    last_error=control.last_error,
                    jobs=tuple(self._job_states(control, runner and scheduler.state == APS_RUNNING, now)),
                    runner_pid=os.getpid() if runner else holder,
                )
            )
        return result

    def _job_states(self, control: ManagedScheduler, processing: bool, now: float) -> list[JobState]:
        jobs = []
        seen = set()
        for _, job in list(memory_jobs(control.scheduler)):
            next_run = getattr(job, "next_run_time", None)
            next_ts = next_run.timestamp() if next_run is not None else None
            overdue = processing and next_ts is not None and now - next_ts > scheduler_health.OVERDUE_AFTER_S
            seen.add(job.id)
            jobs.append(
                JobState(
                    id=job.id,
                    name=job.name,
                    next_run_time=next_ts,
                    last_success=control.last_success.get(job.id),
                    last_outcome=control.last_outcome.get(job.id),
                    running=self.registry.count(control.name, job.id),
                    overdue=overdue,
                )
            )
        # Jobs of shared job stores are not queried from here (no database
        # round trip in a health check): those that ran are listed.
        for job_id, name in list(control.job_names.items()):
            if job_id in seen:
                continue
            jobs.append(
                JobState(
                    id=job_id,
                    name=name,
                    next_run_time=None,
                    last_success=control.last_success.get(job_id),
                    last_outcome=control.last_outcome.get(job_id),
                    running=self.registry.count(control.name, job_id),
                    overdue=False,
                )
            )
        return jobs

    def health_check(self, now: float) -> HealthCheckResult:
        return scheduler_health.evaluate(self.states(), now)

    def pause_all(self, owner: str) -> list[str]:
        """Pause every running scheduler on behalf of ``owner``; returns the
        names paused by this call (already paused ones are not)."""
        paused = []
        for control in self.controls():
            scheduler = control.scheduler
            if scheduler.state == APS_STOPPED:
                continue
            if self.ledger.pause(owner, control.name, running=scheduler.state == APS_RUNNING):
                scheduler.pause()
                paused.append(control.name)
        return paused

    def resume_all(self, owner: str) -> list[str]:
        """Resume what ``owner`` paused and no other owner still holds."""
        resumed = []
        for control in self.controls():
            scheduler = control.scheduler
            if self.ledger.resume(owner, control.name) and scheduler.state == APS_PAUSED:
                scheduler.resume()
                resumed.append(control.name)
        return resumed

    def restart(self, name: str) -> bool:
        """Restart scheduler ``name`` in this process (closing its circuit
        breaker); False when it is not this process's to run or is stopped."""
        control = next((c for c in self.controls() if c.name == name), None)
        if control is None:
            return False
        scheduler = control.scheduler
        with self._lock:
            if scheduler.state == APS_STOPPED or control.mode != MODE_ACTIVE:
                return False
            control.failed = False
            control.restarts = []
            control.died_at = None
            if control.kind != KIND_BACKGROUND:
                scheduler.wakeup()
                return True
            if main_thread_alive(scheduler):
                return True
            return self._restart(control, self.clock())

    # -- exit and fork ------------------------------------------------------------

    def begin_drain(self) -> None:
        with self._lock:
            self.draining = True

    def shutdown_schedulers(self, deadline: float) -> list[str]:
        """Shut every started scheduler down (without waiting for jobs: the
        drain already did), each bounded by ``deadline``; returns the names
        that did not finish in time."""
        late = []
        for control in self.controls():
            scheduler = control.scheduler
            if scheduler.state == APS_STOPPED:
                continue
            # The app's own shutdown() at exit (an atexit handler is common)
            # comes after ours: it must not raise SchedulerNotRunningError.
            control.shut_down_at_exit = True
            worker = threading.Thread(
                target=_quiet_shutdown, args=(scheduler,), name="otel-render-scheduler-stop", daemon=True
            )
            worker.start()
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                late.append(control.name)
        return late

    def after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        self.draining = False
        self._last_start = None
        self._announced = None
        for control in self._controls:
            control.after_fork_in_child()
        if self._election is not None:
            self._election.after_fork_in_child()
        if self._progress is not None:
            self._progress.after_fork_in_child()
        self.registry.after_fork_in_child()

    # -- meters -------------------------------------------------------------------

    def _observe_states(self, _options: Any) -> list[Observation]:
        observations: list[Observation] = []
        if not self.enabled:
            return observations
        for state in self.states():
            for candidate in ALL_STATES:
                observations.append(
                    Observation(
                        1 if candidate == state.state else 0, {"scheduler.name": state.name, "state": candidate}
                    )
                )
        return observations


def _quiet_shutdown(scheduler: Any) -> None:
    try:
        scheduler.shutdown(wait=False)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: scheduler shutdown failed", exc_info=True)


def _service_key(settings: Settings) -> str:
    """What names the service for the cross-instance advisory lock."""
    return (
        settings.standard("RENDER_SERVICE_ID")
        or settings.standard("OTEL_SERVICE_NAME")
        or settings.standard("RENDER_SERVICE_NAME")
        or "unknown_service"
    )
