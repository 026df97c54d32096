"""Job runs as spans and meters, with real APScheduler and the real SDK."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from support.scheduler import wait_until

from otel_render import diagnostics, request_context
from otel_render.scheduler import instrumentor as scheduler_instrumentor


def test_each_run_is_a_root_span_current_while_the_job_runs(instrument):
    harness = instrument()
    seen = []

    def job():
        span = trace.get_current_span()
        seen.append(span.get_span_context().trace_id)
        # The database layer counts statements against the current job.
        request_context.add_db_query(0.002)
        request_context.add_db_query(0.003)
        with harness.tracer_provider.get_tracer("app").start_as_current_span("inside"):
            pass

    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(job, "interval", seconds=0.2, id="refresh-cache")
    with harness.tracer_provider.get_tracer("app").start_as_current_span("the app's own span"):
        scheduler.start()
    spans = harness.wait_for_spans(2, "job refresh-cache")
    first, second = spans[:2]
    assert first.kind is SpanKind.INTERNAL
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id
    assert seen[0] == first.context.trace_id
    inside = [span for span in harness.spans("inside") if span.context.trace_id == first.context.trace_id]
    assert inside and inside[0].parent.span_id == first.context.span_id
    attributes = first.attributes
    assert attributes["scheduler.name"] == "BackgroundScheduler"
    assert attributes["job.id"] == "refresh-cache"
    assert attributes["job.name"].endswith("job")
    assert attributes["job.trigger"].startswith("interval[")
    assert attributes["job.outcome"] == "success"
    assert attributes["job.db.queries"] == 2
    assert attributes["job.db.time"] == pytest.approx(0.005)
    assert attributes["job.lateness"] >= 0
    scheduled = datetime.fromisoformat(attributes["job.scheduled_time"])
    assert scheduled.tzinfo is not None
    assert datetime.fromisoformat(second.attributes["job.scheduled_time"]) - scheduled == timedelta(seconds=0.2)


def test_meters_count_runs_by_outcome_and_record_last_success(instrument):
    harness = instrument()
    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(lambda: None, "interval", seconds=0.1, id="ping")
    before = time.time()
    scheduler.start()
    harness.wait_for_spans(3, "job ping")
    assert harness.value("otel_render.scheduler.job.runs", job_id="ping", outcome="success") >= 3
    assert harness.value("otel_render.scheduler.job.duration", job_id="ping", outcome="success") >= 3
    [last_success] = harness.points("otel_render.scheduler.job.last_success")
    assert dict(last_success.attributes) == {"scheduler.name": "BackgroundScheduler", "job.id": "ping"}
    assert before <= last_success.value <= time.time()
    states = {point.attributes["state"]: point.value for point in harness.points("otel_render.scheduler.state")}
    assert states["running"] == 1
    assert sum(states.values()) == 1


def test_a_failing_job_leaves_an_error_span_an_error_count_and_the_scheduler_running(instrument):
    harness = instrument()
    calls = []

    def flaky():
        calls.append(trace.get_current_span().get_span_context().trace_id)
        if len(calls) == 1:
            raise ConnectionError("could not reach postgresql://app:hunter2@db/app")

    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(flaky, "interval", seconds=0.1, id="sync")
    scheduler.start()
    spans = harness.wait_for_spans(3, "job sync")
    failed, after = spans[0], spans[1:]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["job.outcome"] == "error"
    assert failed.attributes["error.type"] == "builtins.ConnectionError"
    [event] = [event for event in failed.events if event.name == "exception"]
    assert "hunter2" not in event.attributes["exception.message"]
    assert "hunter2" not in event.attributes["exception.stacktrace"]
    assert "hunter2" not in failed.status.description
    assert all(span.status.status_code is StatusCode.UNSET for span in after)
    assert scheduler.running
    assert harness.value("otel_render.scheduler.job.runs", job_id="sync", outcome="error") == 1
    assert harness.value("otel_render.scheduler.job.runs", job_id="sync", outcome="success") >= 2
    [context] = diagnostics.errors.snapshot()
    assert context.source == "job"
    assert context.traceId == format(failed.context.trace_id, "032x")
    assert "hunter2" not in context.error.message


def test_the_error_log_of_a_job_belongs_to_its_trace(instrument):
    harness = instrument()
    captured = []

    class TraceCapture(logging.Handler):
        def emit(self, record):
            captured.append((record.getMessage(), trace.get_current_span().get_span_context().trace_id))

    handler = TraceCapture(level=logging.ERROR)
    logger = logging.getLogger("apscheduler.executors.default")
    logger.addHandler(handler)
    try:
        scheduler = harness.track(BackgroundScheduler())
        scheduler.add_job(lambda: 1 / 0, "interval", seconds=0.1, id="divide")
        scheduler.start()
        [span, *_] = harness.wait_for_spans(1, "job divide")
        wait_until(lambda: captured, message="the job's error log")
    finally:
        logger.removeHandler(handler)
    message, trace_id = captured[0]
    assert "raised an exception" in message
    assert trace_id == span.context.trace_id


def test_runs_skipped_by_max_instances_and_missed_runs_are_counted(instrument):
    harness = instrument()
    release = threading.Event()
    scheduler = harness.track(BackgroundScheduler())
    scheduler.add_job(lambda: release.wait(10), "interval", seconds=0.05, id="slow", max_instances=1)
    scheduler.start()
    wait_until(lambda: harness.value("otel_render.scheduler.job.runs", job_id="slow", outcome="skipped") >= 2)
    release.set()
    # A run time far in the past is beyond the misfire grace time: missed, no span.
    missed_at = datetime.now(timezone.utc) - timedelta(minutes=5)
    scheduler.add_job(lambda: None, "date", run_date=missed_at, id="late", misfire_grace_time=1)
    wait_until(lambda: harness.value("otel_render.scheduler.job.runs", job_id="late", outcome="missed") == 1)
    assert harness.spans("job late") == []


def send_digest():
    pass


def test_jobs_added_without_an_id_are_named_after_their_function_in_meters(instrument):
    harness = instrument()
    scheduler = harness.track(BackgroundScheduler())
    job = scheduler.add_job(send_digest, "interval", seconds=0.1)
    scheduler.start()
    [span, *_] = harness.wait_for_spans(1, "job send_digest")
    assert span.attributes["job.id"] == job.id  # the random id stays on the span
    assert harness.value("otel_render.scheduler.job.runs", job_id="send_digest", outcome="success") >= 1
    assert harness.value("otel_render.scheduler.job.runs", job_id=job.id) == 0


def test_a_blocking_scheduler_is_traced_and_stops_on_shutdown(instrument):
    harness = instrument()
    scheduler = BlockingScheduler()
    scheduler.add_job(lambda: None, "date", run_date=datetime.now(timezone.utc), id="once")
    runner = threading.Thread(target=scheduler.start, daemon=True)
    runner.start()
    [span] = harness.wait_for_spans(1, "job once")
    assert span.attributes["scheduler.name"] == "BlockingScheduler"
    # The loop removes the finished date job after its run; shutting down before
    # that empties the job store under it (APScheduler then raises JobLookupError there).
    assert wait_until(lambda: not scheduler.get_jobs(), 10)
    scheduler.shutdown(wait=False)
    runner.join(15)
    assert not runner.is_alive()


def test_uninstrument_restores_apscheduler(instrument):
    from apscheduler.executors import base, pool
    from apscheduler.schedulers.base import BaseScheduler

    harness = instrument()
    assert pool.run_job is scheduler_instrumentor.traced_run_job
    original_start = BackgroundScheduler.start
    assert hasattr(original_start, "__wrapped__")
    scheduler_instrumentor.APSchedulerInstrumentor().uninstrument()
    assert pool.run_job is base.run_job is scheduler_instrumentor._ORIGINALS["run_job"]
    assert not hasattr(BackgroundScheduler.start, "__wrapped__")
    assert not hasattr(BaseScheduler._process_jobs, "__wrapped__")
    scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(2)})
    done = threading.Event()
    scheduler.add_job(done.set, "interval", seconds=0.05)
    scheduler.start()
    try:
        assert done.wait(10)
    finally:
        scheduler.shutdown(wait=False)
    assert harness.spans() == []
    # The fixture uninstruments again at teardown: a no-op.
    scheduler_instrumentor.APSchedulerInstrumentor().instrument()


async def fetch_rates():
    return trace.get_current_span().get_span_context().trace_id


def test_an_asyncio_scheduler_traces_coroutine_jobs(instrument):
    import asyncio

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    harness = instrument()
    loop = asyncio.new_event_loop()
    scheduler = AsyncIOScheduler(event_loop=loop)
    job = scheduler.add_job(fetch_rates, "interval", seconds=0.05, id="fetch-rates")
    results = []
    scheduler.add_listener(lambda event: results.append(event.retval), mask=2**12)  # EVENT_JOB_EXECUTED

    async def run_for_a_while():
        scheduler.start()
        while len(harness.spans("job fetch-rates")) < 2:
            await asyncio.sleep(0.01)
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(asyncio.wait_for(run_for_a_while(), 15))
    finally:
        loop.close()
    spans = harness.spans("job fetch-rates")
    assert spans[0].attributes["scheduler.name"] == "AsyncIOScheduler"
    assert spans[0].attributes["job.id"] == job.id
    assert results[0] == spans[0].context.trace_id  # the span was current inside the coroutine


def test_jobs_of_a_process_pool_still_run(instrument):
    # The executor pickles run_job by reference: ours must stay picklable.
    import os

    from apscheduler.executors.pool import ProcessPoolExecutor

    harness = instrument()
    pids = []
    scheduler = harness.track(BackgroundScheduler(executors={"default": ProcessPoolExecutor(1)}))
    scheduler.add_listener(lambda event: pids.append(event.retval), mask=2**12)  # EVENT_JOB_EXECUTED
    scheduler.add_job(os.getpid, "date", run_date=datetime.now(timezone.utc), id="in-a-child")
    scheduler.start()
    wait_until(lambda: pids, timeout=60, message="the process pool job")
    assert pids[0] != os.getpid()
