"""The scheduler against a real PostgreSQL: a database blip that kills the
scheduler thread (the APScheduler 3.x failure mode) is repaired by the
supervisor; the advisory lock makes one process across instances run the
jobs, and hands them over when that process dies."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import event
from support.processes import AppProcess, venv_bin
from support.scheduler import instrument, thread_dies, wait_until  # noqa: F401 - instrument is a fixture

from otel_render.scheduler.leader import AdvisoryLock

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
POLL_S = 0.5
GENEROUS = 10


def beat():
    """A job stored in PostgreSQL (pickled by reference)."""


@thread_dies
def test_a_database_blip_that_kills_the_scheduler_thread_is_repaired(instrument, postgres):  # noqa: F811
    harness = instrument({"OTEL_RENDER_SCHEDULER_RESTART_BACKOFF_S": "0.2"}, supervise=True)
    table = f"jobs_{uuid.uuid4().hex[:8]}"
    store = SQLAlchemyJobStore(url=postgres.url(), tablename=table)
    blip = threading.Event()

    @event.listens_for(store.engine, "before_cursor_execute")
    def end_the_session_before_the_next_run_time_query(conn, cursor, statement, *args):
        # Between the scheduler's "due jobs" and "next run time" queries, the
        # server ends the session (a failover, a restart, an idle timeout).
        if blip.is_set() and statement.lstrip().startswith(f"SELECT {table}.next_run_time"):
            blip.clear()
            backend = conn.connection.dbapi_connection.get_backend_pid()
            postgres.psql(f"SELECT pg_terminate_backend({backend})")

    scheduler = harness.track(BackgroundScheduler(jobstores={"default": store}))
    scheduler.add_job(beat, "interval", seconds=0.2, id="beat")
    scheduler.start()
    harness.wait_for_spans(2, "job beat")
    first_thread = scheduler._thread
    blip.set()
    first_thread.join(15)
    assert not first_thread.is_alive(), "the blip did not kill the scheduler thread"
    assert scheduler.running
    ran_before = len(harness.spans("job beat"))
    # The supervisor's own loop notices and restarts it.
    wait_until(lambda: scheduler._thread is not first_thread and scheduler._thread.is_alive(), timeout=30)
    harness.wait_for_spans(ran_before + 2, "job beat")
    [state] = harness.supervisor.states()
    assert state.state == "running" and state.restarts == 1
    assert "OperationalError" in state.last_error


def test_the_advisory_lock_has_one_holder_and_a_lost_session_steps_down(postgres):
    first = AdvisoryLock(postgres.url(), "srv-test")
    second = AdvisoryLock(postgres.url(), "srv-test")
    other_service = AdvisoryLock(postgres.url(), "srv-other")
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert other_service.try_acquire()
        first.release()
        assert second.try_acquire() and second.still_held()
        postgres.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'otel-render-scheduler-leader' AND pid <> pg_backend_pid()"
        )
        assert not second.still_held()
        assert first.try_acquire()
    finally:
        for lock in (first, second, other_service):
            lock.release()


def _worker(receiver, tmp_path, name: str, database_url: str) -> AppProcess:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "scheduler-worker",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_RENDER_INSTANCE_DIR": str(tmp_path / name),  # two instances
        "OTEL_RENDER_SCHEDULER_LEADER_POLL_S": str(POLL_S),
        "OTEL_RENDER_SCHEDULER_LEADER_DATABASE_URL": database_url,
        "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": "3",
    }
    command = [venv_bin("opentelemetry-instrument"), sys.executable, str(APPS / "scheduler_worker.py")]
    return AppProcess(command, env=env, cwd=APPS).start()


def _runners(receiver) -> set[int]:
    return {span.attributes["app.pid"] for span in receiver.spans("job tick")}


def test_one_process_across_instances_runs_the_jobs_and_another_takes_over(otlp_receiver, tmp_path, postgres):
    url = postgres.url()
    first = _worker(otlp_receiver, tmp_path, "instance-a", url)
    second = _worker(otlp_receiver, tmp_path, "instance-b", url)
    try:
        # Both are up: one runs the BlockingScheduler, the other holds it on standby.
        assert otlp_receiver.wait_for(
            lambda r: (
                r.latest_sum("otel_render.scheduler.state", {"state": "running"}) == 1
                and r.latest_sum("otel_render.scheduler.state", {"state": "standby"}) == 1
            ),
            timeout=30,
        ), first.describe() + second.describe()
        assert otlp_receiver.wait_for(lambda r: len(r.spans("job tick")) >= 4, timeout=20)
        [runner] = _runners(otlp_receiver)
        assert runner in (first.pid, second.pid)
        standby = second if runner == first.pid else first
        killed_at = time.time()
        os.kill(runner, signal.SIGKILL)
        assert otlp_receiver.wait_for(lambda r: standby.pid in _runners(r), timeout=POLL_S * GENEROUS + 10), (
            standby.describe()
        )
        taken_over = min(
            span.start_time_unix_nano / 1e9
            for span in otlp_receiver.spans("job tick")
            if span.attributes["app.pid"] == standby.pid
        )
        assert taken_over - killed_at < POLL_S * GENEROUS
    finally:
        first.close()
        second.close()
