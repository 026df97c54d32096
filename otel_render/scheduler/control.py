"""What otel-render knows about each APScheduler scheduler of this process, and
the few operations on APScheduler's internals the supervisor needs.

A :class:`ManagedScheduler` is created when the app starts a scheduler. Its
``mode`` says whether *this process* runs the scheduler's jobs (``active``) or
holds it without running them (``waiting``: another process is the runner, or
the scheduler waits for its stagger slot). The reported state (``running``,
``paused``, ``standby``, ``dead``, ``failed``, ``stopped``) is derived from the
mode and APScheduler's own state by :func:`derive_state`.

The operations on APScheduler 3.x internals live here and nowhere else:

- :func:`start_without_thread`: ``BackgroundScheduler.start`` minus the thread
  (executors and job stores started, state running), for a process that holds
  the scheduler without running it;
- :func:`revive`: fresh executors (new thread pools) and a fresh main-loop
  thread, keeping job stores and jobs. A plain ``shutdown(); start()`` would
  empty in-memory job stores and leave shut-down pools behind;
- :func:`prepare_for_activation`: before a process starts running jobs whose
  in-memory schedule it did not advance itself, continue after the previous
  runner's progress, and run once what fell due while nobody could run it.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

MODE_WAITING = "waiting"
MODE_ACTIVE = "active"

STATE_RUNNING = "running"
STATE_PAUSED = "paused"
STATE_STANDBY = "standby"
STATE_STOPPED = "stopped"
STATE_DEAD = "dead"
STATE_FAILED = "failed"
ALL_STATES = (STATE_RUNNING, STATE_PAUSED, STATE_STANDBY, STATE_STOPPED, STATE_DEAD, STATE_FAILED)

KIND_BACKGROUND = "background"  # its own main-loop thread: the supervisor can revive it
KIND_BLOCKING = "blocking"  # runs in the thread that called start()
KIND_EVENT_LOOP = "event_loop"  # asyncio, gevent, tornado, twisted, qt

# APScheduler's state constants (apscheduler.schedulers.base), without importing it here.
APS_STOPPED = 0
APS_RUNNING = 1
APS_PAUSED = 2

_AUTO_ID = re.compile(r"[0-9a-f]{32}")


def job_key(job_id: str, job_name: str | None) -> str:
    """The bounded name of a job for metric attributes and span names.

    APScheduler gives a job added without ``id=`` a random ``uuid4().hex``,
    different in every process and for every one-off job: the job's name (its
    function's name by default) is used instead.
    """
    if _AUTO_ID.fullmatch(job_id) and job_name:
        return job_name
    return job_id


@dataclass(frozen=True)
class JobState:
    """One job as the health check and the recovery API see it."""

    id: str
    name: str
    next_run_time: float | None  # unix seconds; None when paused (or unknown for shared job stores)
    last_success: float | None  # unix seconds, this process
    last_outcome: str | None
    running: int
    overdue: bool


@dataclass(frozen=True)
class SchedulerState:
    """One scheduler of this process."""

    name: str
    kind: str  # the APScheduler class name
    state: str  # one of ALL_STATES
    runner: bool  # this process runs its jobs
    alive: bool  # it is processing jobs here (or, on standby, its holder is fine)
    restarts: int
    paused_by: tuple[str, ...]
    last_error: str | None
    jobs: tuple[JobState, ...] = ()
    runner_pid: int | None = None


@dataclass
class ManagedScheduler:
    """The supervisor's record of one scheduler (per process)."""

    name: str
    ref: weakref.ReferenceType
    kind: str
    order: int
    mode: str = MODE_WAITING
    # Subject to the leader election (False for a scheduler found already
    # running when otel-render was instrumented: it is supervised only).
    elected: bool = True
    # Created in this process by the app (not inherited through fork).
    started_here: bool = True
    # Holds executors created in another process (inherited through fork).
    inherited: bool = False
    failed: bool = False
    died_at: float | None = None
    restarts: list[float] = field(default_factory=list)
    restarts_total: int = 0
    last_error: str | None = None
    activated_at: float | None = None
    last_success: dict[str, float] = field(default_factory=dict)
    last_outcome: dict[str, str] = field(default_factory=dict)
    job_names: dict[str, str] = field(default_factory=dict)
    # Wall-clock times seen by the gate: when it last processed jobs and when
    # it expects to again (None: not until woken).
    last_processed: float | None = None
    next_wakeup: float | None = None
    listener: Any = None
    # Shut down by the graceful stop at exit (a later shutdown() is a no-op).
    shut_down_at_exit: bool = False

    @property
    def scheduler(self) -> Any:
        return self.ref()

    def after_fork_in_child(self) -> None:
        """The child holds the scheduler without its threads and runs nothing yet."""
        self.mode = MODE_WAITING
        self.inherited = True
        self.started_here = False
        self.died_at = None
        self.restarts = []
        self.activated_at = None
        self.last_success = {}
        self.last_outcome = {}
        self.last_processed = None
        self.next_wakeup = None
        self.shut_down_at_exit = False
        scheduler = self.scheduler
        if scheduler is not None:
            # Locks another thread of the parent may have held at the fork.
            for attribute in ("_executors_lock", "_jobstores_lock", "_listeners_lock"):
                if hasattr(scheduler, attribute):
                    setattr(scheduler, attribute, scheduler._create_lock())  # pylint: disable=protected-access


def kind_of(scheduler: Any) -> str:
    from apscheduler.schedulers.background import BackgroundScheduler  # pylint: disable=import-outside-toplevel
    from apscheduler.schedulers.blocking import BlockingScheduler  # pylint: disable=import-outside-toplevel

    if isinstance(scheduler, BackgroundScheduler):
        return KIND_BACKGROUND
    if isinstance(scheduler, BlockingScheduler) and not any(
        cls.__name__ == "GeventScheduler" for cls in type(scheduler).__mro__
    ):
        return KIND_BLOCKING
    return KIND_EVENT_LOOP


def main_thread_alive(scheduler: Any) -> bool:
    """Whether a BackgroundScheduler's main-loop thread exists in this process."""
    thread = scheduler.__dict__.get("_thread")
    return isinstance(thread, threading.Thread) and thread.is_alive()


def derive_state(
    *,
    aps_state: int,
    mode: str,
    kind: str,
    failed: bool,
    thread_alive: bool,
) -> str:
    """The reported state of a scheduler (see the module docstring)."""
    if aps_state == APS_STOPPED:
        return STATE_STOPPED
    if failed:
        return STATE_FAILED
    if mode != MODE_ACTIVE:
        return STATE_PAUSED if aps_state == APS_PAUSED else STATE_STANDBY
    if kind == KIND_BACKGROUND and not thread_alive:
        return STATE_DEAD
    return STATE_PAUSED if aps_state == APS_PAUSED else STATE_RUNNING


# --------------------------------------------------------------------------
# Starting and reviving
# --------------------------------------------------------------------------


def start_without_thread(scheduler: Any, *args: Any, **kwargs: Any) -> None:
    """``BackgroundScheduler.start`` without creating the main-loop thread."""
    from apscheduler.schedulers.base import BaseScheduler  # pylint: disable=import-outside-toplevel

    if scheduler._event is None or scheduler._event.is_set():  # pylint: disable=protected-access
        scheduler._event = threading.Event()  # pylint: disable=protected-access
    BaseScheduler.start(scheduler, *args, **kwargs)


def refresh_executors(scheduler: Any, *, inherited: bool) -> list[str]:
    """Give every pool executor a new pool; returns the aliases refreshed.

    In the same process, the old pool is shut down without waiting (runs in
    progress finish in their threads and still report to the executor). A
    pool inherited through fork has no threads here and is simply dropped,
    along with the parent's count of running instances.
    """
    refreshed = []
    with scheduler._executors_lock:  # pylint: disable=protected-access
        for alias, executor in list(scheduler._executors.items()):  # pylint: disable=protected-access
            pool = getattr(executor, "_pool", None)
            fresh: concurrent.futures.Executor | None = None
            if isinstance(pool, concurrent.futures.ThreadPoolExecutor):
                fresh = concurrent.futures.ThreadPoolExecutor(
                    pool._max_workers,  # pylint: disable=protected-access
                    thread_name_prefix=pool._thread_name_prefix,  # pylint: disable=protected-access
                    initializer=pool._initializer,  # pylint: disable=protected-access
                    initargs=pool._initargs,  # pylint: disable=protected-access
                )
            elif isinstance(pool, concurrent.futures.ProcessPoolExecutor):
                fresh = type(pool)(pool._max_workers, **getattr(executor, "pool_kwargs", {}))  # pylint: disable=protected-access
            if fresh is not None:
                executor._pool = fresh  # pylint: disable=protected-access
                if not inherited:
                    pool.shutdown(wait=False)
                refreshed.append(alias)
            if inherited and hasattr(executor, "_instances"):
                executor._instances.clear()  # pylint: disable=protected-access
            executor.start(scheduler, alias)
    return refreshed


def revive(scheduler: Any, *, inherited: bool) -> threading.Thread:
    """Bring a BackgroundScheduler's processing back: fresh executors and a
    fresh main-loop thread; job stores, jobs, listeners and state are kept."""
    refresh_executors(scheduler, inherited=inherited)
    scheduler._event = threading.Event()  # pylint: disable=protected-access
    thread = threading.Thread(
        target=scheduler._main_loop,  # pylint: disable=protected-access
        name="APScheduler",
        daemon=getattr(scheduler, "_daemon", True),
    )
    scheduler._thread = thread  # pylint: disable=protected-access
    thread.start()
    scheduler.wakeup()
    return thread


# --------------------------------------------------------------------------
# Jobs of in-memory job stores
# --------------------------------------------------------------------------


def memory_jobs(scheduler: Any) -> Iterator[tuple[Any, Any]]:
    """``(store, job)`` for every job of the scheduler's in-memory job stores."""
    from apscheduler.jobstores.memory import MemoryJobStore  # pylint: disable=import-outside-toplevel

    for store in list(scheduler._jobstores.values()):  # pylint: disable=protected-access
        if isinstance(store, MemoryJobStore):
            for job in store.get_all_jobs():
                yield store, job


def progress_snapshot(scheduler: Any) -> dict[str, float]:
    """Next run time (unix seconds) of every scheduled job of the in-memory stores."""
    return {
        job.id: job.next_run_time.timestamp()
        for _, job in memory_jobs(scheduler)
        if getattr(job, "next_run_time", None) is not None
    }


def is_recurring(trigger: Any) -> bool:
    from apscheduler.triggers.date import DateTrigger  # pylint: disable=import-outside-toplevel

    return not isinstance(trigger, DateTrigger)


def plan_next_run_time(
    *,
    next_run_time: datetime,
    recorded: float | None,
    has_record: bool,
    trigger: Any,
    misfire_grace_time: float | None,
    now: datetime,
) -> datetime:
    """Where a job's schedule resumes when this process starts running it.

    - ``has_record`` (another process ran this scheduler): a recurring job
      continues at its first fire time at or after ``recorded``, the next run
      time the previous runner had reached; runs before it were its business.
    - no record (nobody ran it yet: boot, stagger): a run time that passed
      longer ago than the misfire grace time runs once now instead of being
      reported missed.
    """
    planned = next_run_time
    if has_record:
        if recorded is not None and is_recurring(trigger):
            resume_at = datetime.fromtimestamp(recorded, timezone.utc)
            if planned < resume_at:
                candidate = trigger.get_next_fire_time(None, resume_at)
                if candidate is not None:
                    planned = candidate
        return planned
    if misfire_grace_time is not None and now - planned > timedelta(seconds=misfire_grace_time):
        planned = now.astimezone(planned.tzinfo) if planned.tzinfo else now
    return planned


def prepare_for_activation(scheduler: Any, record: Mapping[str, float] | None, now: datetime) -> int:
    """Adjust the in-memory schedule before this process runs it; returns how
    many jobs moved."""
    moved = 0
    with scheduler._jobstores_lock:  # pylint: disable=protected-access
        for store, job in list(memory_jobs(scheduler)):
            current = getattr(job, "next_run_time", None)
            if current is None:
                continue
            planned = plan_next_run_time(
                next_run_time=current,
                recorded=record.get(job.id) if record is not None else None,
                has_record=record is not None,
                trigger=job.trigger,
                misfire_grace_time=job.misfire_grace_time,
                now=now,
            )
            if planned != current:
                job._modify(next_run_time=planned)  # pylint: disable=protected-access
                store.update_job(job)
                moved += 1
    return moved
