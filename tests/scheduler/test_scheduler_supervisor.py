"""The supervisor with real APScheduler schedulers and a fake clock: dead
threads revived, the circuit breaker, stagger, long runs, standby and
takeover, and the API the recovery module calls."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from support.scheduler import BlipStore, FakeClock, LockContender, instance_run_directory, thread_dies, wait_until

from otel_render import diagnostics
from otel_render.health import DEGRADED, HEALTHY, UNHEALTHY
from otel_render.scheduler import leader


def beat():
    pass


def _dead_scheduler(harness, store: BlipStore) -> BackgroundScheduler:
    """A scheduler whose thread was killed by its job store after running jobs."""
    scheduler = harness.track(BackgroundScheduler(jobstores={"default": store}))
    scheduler.add_job(beat, "interval", seconds=0.05, id="beat")
    scheduler.start()
    harness.wait_for_spans(2, "job beat")
    thread = scheduler._thread
    store.failing.set()
    thread.join(15)
    assert not thread.is_alive(), "the job store's exception did not kill the scheduler thread"
    assert scheduler.running, "APScheduler no longer says it is running"
    return scheduler


def _state(harness, name="BackgroundScheduler"):
    return next(state for state in harness.supervisor.states() if state.name == name)


@thread_dies
def test_a_thread_killed_by_its_job_store_is_restarted_with_fresh_executors(instrument):
    clock = FakeClock()
    harness = instrument({"OTEL_RENDER_SCHEDULER_RESTART_BACKOFF_S": "2"}, clock=clock)
    store = BlipStore()
    scheduler = _dead_scheduler(harness, store)
    old_pool = scheduler._executors["default"]._pool
    store.failing.clear()  # the database is back

    harness.supervisor.tick()
    state = _state(harness)
    assert state.state == "dead" and not state.alive
    assert "ConnectionError" in state.last_error
    assert harness.supervisor.health_check(0).status == DEGRADED
    runs_before = len(harness.spans("job beat"))

    clock.advance(1.9)  # backoff not over yet
    harness.supervisor.tick()
    assert not scheduler._thread.is_alive()

    clock.advance(0.2)
    harness.supervisor.tick()
    assert scheduler._thread.is_alive()
    assert scheduler._executors["default"]._pool is not old_pool
    harness.wait_for_spans(runs_before + 3, "job beat")
    assert _state(harness).state == "running"
    assert harness.value("otel_render.scheduler.restarts", outcome="restarted") == 1
    [action] = diagnostics.actions.snapshot()
    assert (action.action, action.outcome) == ("restart_scheduler", "done")
    assert "ConnectionError" in action.detail["cause"]
    assert any(context.source == "scheduler" for context in diagnostics.errors.snapshot())
    assert harness.supervisor.health_check(0).status == HEALTHY


@thread_dies
def test_the_circuit_breaker_stops_a_restart_loop(instrument):
    clock = FakeClock()
    harness = instrument(
        {
            "OTEL_RENDER_SCHEDULER_RESTART_LIMIT": "3",
            "OTEL_RENDER_SCHEDULER_RESTART_WINDOW_S": "600",
            "OTEL_RENDER_SCHEDULER_RESTART_BACKOFF_S": "1",
        },
        clock=clock,
    )
    store = BlipStore()
    scheduler = _dead_scheduler(harness, store)  # and the store keeps failing
    for delay in (1, 2, 4):  # backoff doubles
        harness.supervisor.tick()
        clock.advance(delay)
        harness.supervisor.tick()
        thread = scheduler._thread
        thread.join(15)
        assert not thread.is_alive(), "the revived thread should die again on the failing store"
    harness.supervisor.tick()
    assert _state(harness).state == "failed"
    for _ in range(5):
        clock.advance(60)
        harness.supervisor.tick()
    assert not scheduler._thread.is_alive()
    assert harness.value("otel_render.scheduler.restarts", outcome="restarted") == 3
    assert harness.value("otel_render.scheduler.restarts", outcome="gave_up") == 1
    result = harness.supervisor.health_check(0)
    assert result.status == UNHEALTHY
    assert "failed" in result.output
    assert [a.outcome for a in diagnostics.actions.snapshot()] == ["done", "done", "done", "escalated"]
    states = {p.attributes["state"]: p.value for p in harness.points("otel_render.scheduler.state")}
    assert states["failed"] == 1 and states["running"] == 0

    # A restart by hand (the recovery API) closes the breaker.
    store.failing.clear()
    assert harness.supervisor.restart("BackgroundScheduler")
    assert scheduler._thread.is_alive()
    assert _state(harness).state == "running"


def test_schedulers_started_together_are_staggered(instrument):
    clock = FakeClock()
    harness = instrument({"OTEL_RENDER_SCHEDULER_STAGGER_S": "5"}, clock=clock)
    schedulers = []
    for number in range(3):
        scheduler = harness.track(BackgroundScheduler())
        scheduler.add_job(beat, "interval", seconds=0.05, id=f"beat-{number}")
        scheduler.start()
        schedulers.append(scheduler)
    assert [s.running for s in schedulers] == [True, True, True]
    alive = lambda: ["_thread" in s.__dict__ and s._thread.is_alive() for s in schedulers]
    assert alive() == [True, False, False]
    assert [state.state for state in harness.supervisor.states()] == ["running", "standby", "standby"]

    clock.advance(4.9)
    harness.supervisor.tick()
    assert alive() == [True, False, False]
    clock.advance(0.1)
    harness.supervisor.tick()
    assert alive() == [True, True, False]
    harness.wait_for_spans(1, "job beat-1")
    clock.advance(4.9)
    harness.supervisor.tick()
    assert alive() == [True, True, False]
    assert harness.spans("job beat-2") == []
    clock.advance(0.1)
    harness.supervisor.tick()
    assert alive() == [True, True, True]
    harness.wait_for_spans(1, "job beat-2")


def test_a_job_past_its_max_runtime_has_its_stack_captured_once(instrument):
    clock = FakeClock()
    harness = instrument({"OTEL_RENDER_SCHEDULER_MAX_RUNTIME_S": "30"}, clock=clock)
    release = threading.Event()
    entered = threading.Event()

    def stuck_in_report():
        entered.set()
        release.wait(30)

    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(stuck_in_report, "date", run_date=datetime.now(timezone.utc), id="nightly-report")
    scheduler.start()
    assert entered.wait(15)
    clock.advance(29)
    harness.supervisor.tick()
    assert diagnostics.stalls.snapshot() == []
    clock.advance(2)
    harness.supervisor.tick()
    harness.supervisor.tick()
    [stall] = diagnostics.stalls.snapshot()
    assert (stall.kind, stall.name, stall.limit_s) == ("job", "nightly-report", 30)
    assert stall.running_s >= 30
    assert "stuck_in_report" in stall.stack
    release.set()
    [span] = harness.wait_for_spans(1, "job nightly-report")
    assert stall.traceId == format(span.context.trace_id, "032x")
    assert any(event.name == "otel_render.job.max_runtime_exceeded" for event in span.events)


def test_standby_holds_the_scheduler_without_a_thread_and_takes_over_when_the_runner_dies(instrument, tmp_path):
    clock = FakeClock()
    directory = instance_run_directory(tmp_path)
    holder = LockContender(directory, hold=True)
    try:
        harness = instrument({"OTEL_RENDER_SCHEDULER_LEADER_POLL_S": "2"}, clock=clock)
        scheduler = harness.track(BackgroundScheduler())
        scheduler.add_job(beat, "interval", seconds=0.05, id="beat")
        scheduler.start()
        assert scheduler.running and "_thread" not in scheduler.__dict__
        [state] = harness.supervisor.states()
        assert (state.state, state.runner, state.runner_pid) == ("standby", False, holder.pid)
        harness.supervisor.tick()
        assert harness.spans() == []
        assert harness.supervisor.health_check(0).status == HEALTHY
    finally:
        holder.kill()
    harness.supervisor.tick()  # within the poll interval: not yet
    assert "_thread" not in scheduler.__dict__
    clock.advance(2)
    harness.supervisor.tick()
    assert scheduler._thread.is_alive()
    harness.wait_for_spans(2, "job beat")
    [state] = harness.supervisor.states()
    assert (state.state, state.runner, state.runner_pid) == ("running", True, os.getpid())
    record = leader.InstanceLock(directory).holder()
    assert record.pid == os.getpid()


def test_the_gunicorn_master_never_runs_jobs(instrument):
    clock = FakeClock()
    harness = instrument(role=lambda: ("master", os.getpid()), clock=clock)
    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(beat, "interval", seconds=0.05, id="beat")
    scheduler.start()
    for _ in range(3):
        clock.advance(10)
        harness.supervisor.tick()
    assert "_thread" not in scheduler.__dict__
    assert [s.state for s in harness.supervisor.states()] == ["standby"]
    scheduler.shutdown()  # a scheduler held without a thread shuts down cleanly
    assert not scheduler.running


def test_takeover_continues_after_the_previous_runners_progress(instrument, tmp_path):
    clock = FakeClock()
    directory = instance_run_directory(tmp_path)
    holder = LockContender(directory, hold=True)
    harness = instrument(clock=clock)
    scheduler = harness.track(BackgroundScheduler())
    job = scheduler.add_job(beat, "interval", minutes=10, id="hourly-ish")
    scheduler.start()
    planned = job.next_run_time
    # The previous runner had already run the next two run times.
    store = leader.ProgressStore(directory, directory.name)
    store.write("BackgroundScheduler", {"hourly-ish": (planned + timedelta(minutes=20)).timestamp()})
    holder.kill()
    clock.advance(10)
    harness.supervisor.tick()
    assert scheduler._thread.is_alive()
    assert scheduler.get_job("hourly-ish").next_run_time == planned + timedelta(minutes=20)


def test_pause_and_resume_on_behalf_of_an_owner(instrument):
    harness = instrument()
    ours = harness.track(BackgroundScheduler())
    ours.start()
    apps = harness.track(BackgroundScheduler())
    apps.start(paused=True)  # the app paused this one itself
    supervisor = harness.supervisor
    assert supervisor.pause_all("recovery") == ["BackgroundScheduler"]
    assert supervisor.pause_all("memory") == []
    assert [s.state for s in supervisor.states()] == ["paused", "paused"]
    assert supervisor.states()[0].paused_by == ("memory", "recovery")
    assert supervisor.resume_all("recovery") == []  # "memory" still holds it
    assert supervisor.resume_all("memory") == ["BackgroundScheduler"]
    assert [s.state for s in supervisor.states()] == ["running", "paused"]
    assert supervisor.resume_all("recovery") == []


def test_jobs_that_are_not_processed_are_reported_overdue(instrument):
    now = [1_000_000.0]
    harness = instrument(wall=lambda: now[0])
    scheduler = harness.track(BackgroundScheduler())
    job = scheduler.add_job(beat, "interval", hours=1, id="sync")
    scheduler.start()
    healthy = harness.supervisor.health_check(now[0])
    assert (healthy.status, healthy.output) == (HEALTHY, "BackgroundScheduler: running, 1 job")
    now[0] = job.next_run_time.timestamp() + 31
    result = harness.supervisor.health_check(now[0])
    assert result.status == DEGRADED
    assert result.observedValue["BackgroundScheduler"]["jobs"]["sync"]["overdue"] is True
    assert "overdue sync" in result.output


def test_a_long_stagger_lets_due_runs_happen_once_at_start_not_missed(instrument):
    clock = FakeClock()
    harness = instrument({"OTEL_RENDER_SCHEDULER_STAGGER_S": "5"}, clock=clock)
    first = harness.track(BackgroundScheduler())
    first.start()
    second = harness.track(BackgroundScheduler())
    due = datetime.now(timezone.utc) - timedelta(seconds=20)  # fell due while it waited
    second.add_job(beat, "interval", hours=1, next_run_time=due, id="warm-up", misfire_grace_time=1)
    second.start()
    clock.advance(5)
    harness.supervisor.tick()
    harness.wait_for_spans(1, "job warm-up")
    wait_until(lambda: harness.value("otel_render.scheduler.job.runs", job_id="warm-up", outcome="success") == 1)
    assert harness.value("otel_render.scheduler.job.runs", job_id="warm-up", outcome="missed") == 0


def test_stagger_with_a_short_setting_and_the_real_supervisor_loop(instrument):
    harness = instrument({"OTEL_RENDER_SCHEDULER_STAGGER_S": "0.5"}, supervise=True)
    due = datetime.now(timezone.utc)
    started = time.time()
    for name in ("first", "second"):
        scheduler = harness.track(BackgroundScheduler())
        scheduler.add_job(beat, "date", run_date=due, id=name, misfire_grace_time=30)
        scheduler.start()
    harness.wait_for_spans(1, "job first")
    [second] = harness.wait_for_spans(1, "job second")
    assert second.start_time / 1e9 - started >= 0.5
