"""Graceful stop: running jobs finish within the deadline, new runs do not
start, jobs past the deadline are abandoned (and do not hold the exit), the
leader lock is given up."""

from __future__ import annotations

import concurrent.futures.thread as pool_threads
import threading
import time
from datetime import datetime, timezone

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from opentelemetry.trace import StatusCode
from support.scheduler import LockContender, instance_run_directory, wait_until

GENEROUS = 10


def test_a_running_job_that_fits_the_deadline_finishes_and_nothing_new_starts(instrument):
    harness = instrument({"OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S": "5"})
    entered = threading.Event()

    def report():
        entered.set()
        time.sleep(0.3)

    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(report, "interval", seconds=0.05, id="report")
    scheduler.start()
    assert entered.wait(15)
    report_result = harness.stop.drain()
    assert report_result.abandoned == []
    assert report_result.finished >= 1
    assert not scheduler.running
    scheduler.shutdown()  # the app's own atexit handler, after ours: no SchedulerNotRunningError
    spans = harness.spans("job report")
    assert spans and all(span.attributes["job.outcome"] == "success" for span in spans)
    assert spans[-1].end_time - spans[-1].start_time >= 0.3e9
    time.sleep(0.2)
    assert len(harness.spans("job report")) == len(spans)


def test_a_job_past_the_deadline_is_abandoned_and_does_not_hold_the_exit(instrument):
    harness = instrument({"OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S": "0.3"})
    release = threading.Event()
    entered = threading.Event()
    threads = []

    def export_everything():
        threads.append(threading.current_thread())
        entered.set()
        release.wait(30)

    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(export_everything, "date", run_date=datetime.now(timezone.utc), id="export")
    scheduler.start()
    assert entered.wait(15)
    # (The pool registers its thread for the exit join just after starting it.)
    wait_until(lambda: threads[0] in pool_threads._threads_queues)
    started = time.monotonic()
    result = harness.stop.drain()
    took = time.monotonic() - started
    try:
        assert result.abandoned == ["export"]
        assert took < 0.3 * GENEROUS
        [span] = harness.spans("job export")
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["job.outcome"] == "abandoned"
        # The interpreter will not wait for this thread at exit.
        assert threads[0] not in pool_threads._threads_queues
    finally:
        release.set()
    threads[0].join(10)
    assert len(harness.spans("job export")) == 1  # the late end did not end the span twice


def test_a_run_queued_behind_a_busy_pool_is_not_started_at_shutdown(instrument):
    harness = instrument({"OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S": "10"})
    release = threading.Event()
    entered = threading.Event()

    def busy():
        entered.set()
        release.wait(30)

    scheduler = harness.track(BackgroundScheduler(executors={"default": ThreadPoolExecutor(1)}))
    now = datetime.now(timezone.utc)
    scheduler.add_job(busy, "date", run_date=now, id="busy")
    scheduler.add_job(lambda: None, "date", run_date=now, id="queued", misfire_grace_time=60)
    scheduler.start()
    assert entered.wait(15)
    wait_until(lambda: scheduler.get_job("queued") is None, message="the queued run to be submitted")
    drain = threading.Thread(target=harness.stop.drain)
    drain.start()
    wait_until(lambda: harness.supervisor.draining)
    release.set()
    drain.join(15)
    assert not drain.is_alive()
    assert harness.spans("job queued") == []
    assert harness.value("otel_render.scheduler.job.runs", job_id="queued", outcome="missed") == 1


def test_the_drain_gives_up_the_leader_lock(instrument, tmp_path):
    harness = instrument()
    scheduler = harness.track(BackgroundScheduler())
    scheduler.start()
    contender = LockContender(instance_run_directory(tmp_path))
    try:
        assert contender.try_lock() == "busy"
        report = harness.stop.drain()
        assert contender.try_lock() == "got"
    finally:
        contender.kill()
    assert harness.stop.drain() is report  # once per process
