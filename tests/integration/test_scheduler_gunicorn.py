"""APScheduler under real gunicorn with 2 workers, as on Render: each
scheduled run time of a 1 s job runs exactly once, with and without
--preload, in one worker; killing that worker hands the jobs to another
within the poll interval; SIGTERM lets a running job finish within the
shutdown deadline, or abandons it past the deadline.

Everything is asserted from what reaches the loopback OTLP receiver: the job
spans' ``job.scheduled_time``, the ``app.pid`` the job puts on its (current)
span, and the scheduler state gauge.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, wait_until

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
POLL_S = 0.5
GENEROUS = 10  # bounds are GENEROUS x the configured poll interval / deadline
WINDOW = timedelta(seconds=10)


def _env(receiver, tmp_path, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "scheduler-app",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_RENDER_INSTANCE_DIR": str(tmp_path / "instance"),
        "OTEL_RENDER_SCHEDULER_LEADER_POLL_S": str(POLL_S),
        "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": "5",
        **extra,
    }


def _ticks(receiver) -> list:
    return receiver.spans("job tick")


def _scheduled(span) -> datetime:
    return datetime.fromisoformat(span.attributes["job.scheduled_time"])


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_each_run_time_runs_once_in_one_worker_and_a_killed_runner_hands_over(otlp_receiver, tmp_path, preload):
    port = free_port()
    command = gunicorn_command("scheduler_app:app", port=port, workers=2, preload=preload)
    with AppProcess(command, env=_env(otlp_receiver, tmp_path), cwd=APPS) as server:
        server.wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        assert otlp_receiver.wait_for(lambda r: _ticks(r), timeout=30), server.describe()
        first = min(_scheduled(span) for span in _ticks(otlp_receiver))
        assert otlp_receiver.wait_for(
            lambda r: any(_scheduled(span) >= first + WINDOW for span in _ticks(r)), timeout=40
        ), server.describe()

        spans = _ticks(otlp_receiver)
        in_window = [_scheduled(span) for span in spans if _scheduled(span) < first + WINDOW]
        assert len(in_window) == len(set(in_window)), "a scheduled run time ran more than once"
        # 10 run times in 10 s; one or two may be missed on a loaded machine, none doubled.
        assert 8 <= len(in_window) <= 10, sorted(in_window)
        runners = {span.attributes["app.pid"] for span in spans}
        assert len(runners) == 1, f"jobs ran in several processes: {runners}"
        [runner] = runners
        workers = server.children()
        assert runner in workers and runner != server.pid
        # The meters agree: one process of the instance runs the scheduler.
        standby = 2 if preload else 1  # with --preload the master holds one too
        assert otlp_receiver.wait_for(
            lambda r: (
                r.latest_sum("otel_render.scheduler.state", {"state": "running"}) == 1
                and r.latest_sum("otel_render.scheduler.state", {"state": "standby"}) == standby
            ),
            timeout=20,
        ), otlp_receiver.metric_points("otel_render.scheduler.state")
        assert otlp_receiver.latest_sum("otel_render.scheduler.job.runs", {"job.id": "tick", "outcome": "success"}) >= 8

        killed_at = time.time()
        os.kill(runner, signal.SIGKILL)
        assert otlp_receiver.wait_for(
            lambda r: any(span.attributes["app.pid"] != runner for span in _ticks(r)), timeout=POLL_S * GENEROUS + 10
        ), server.describe()
        taken_over = min(
            span.start_time_unix_nano / 1e9 for span in _ticks(otlp_receiver) if span.attributes["app.pid"] != runner
        )
        # The standby worker polls every POLL_S; its first run follows within a second (1 s job).
        assert taken_over - killed_at < POLL_S * GENEROUS, f"took {taken_over - killed_at:.1f} s"
        new_runner = next(
            span.attributes["app.pid"] for span in _ticks(otlp_receiver) if span.attributes["app.pid"] != runner
        )
        assert otlp_receiver.wait_for(
            lambda r: sum(1 for span in _ticks(r) if span.attributes["app.pid"] == new_runner) >= 3, timeout=20
        )
        every = [_scheduled(span) for span in _ticks(otlp_receiver)]
        assert len(every) == len(set(every)), "the new runner re-ran a run time the old one had run"
        assert {span.attributes["app.pid"] for span in _ticks(otlp_receiver)} == {runner, new_runner}
        assert server.stop(signal.SIGTERM, timeout=60) == 0, server.output()


def _started_runs(markers: Path) -> list[str]:
    return sorted(path.name for path in markers.glob("*.started"))


def _sigterm_during_a_run(otlp_receiver, tmp_path: Path, job_s: float, deadline_s: float):
    """Start the scheduler app (2 workers, --preload) whose job runs ``job_s``
    seconds, SIGTERM gunicorn once a run has started; return the app, its exit
    code, how long it took to stop and the runs that started."""
    markers = tmp_path / "markers"
    markers.mkdir()
    env = _env(
        otlp_receiver,
        tmp_path,
        SCHED_APP_SLEEP_S=str(job_s),
        SCHED_APP_MARKER_DIR=str(markers),
        OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S=str(deadline_s),
    )
    port = free_port()
    with AppProcess(
        gunicorn_command("scheduler_app:app", port=port, workers=2, preload=True), env=env, cwd=APPS
    ) as server:
        server.wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        assert wait_until(lambda: _started_runs(markers), 30, interval=0.02), server.describe()
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
    return server, code, took, _started_runs(markers)


def test_sigterm_lets_a_running_job_finish_when_it_fits_the_deadline(otlp_receiver, tmp_path):
    deadline_s = 8.0
    server, code, took, started_runs = _sigterm_during_a_run(otlp_receiver, tmp_path, job_s=2, deadline_s=deadline_s)
    assert code == 0, server.output()
    assert took < deadline_s * 2, f"gunicorn took {took:.1f} s to stop\n{server.output()}"
    assert otlp_receiver.wait_for(lambda r: len(_ticks(r)) >= len(started_runs), timeout=10), server.output()
    spans = _ticks(otlp_receiver)
    # Every run that started finished, the one in flight at SIGTERM included.
    assert len(spans) == len(started_runs)
    assert {span.attributes["job.outcome"] for span in spans} == {"success"}
    assert all(span.end_time_unix_nano - span.start_time_unix_nano >= 2e9 for span in spans)
    # The app's own atexit shutdown() ran after ours without complaint.
    assert "SchedulerNotRunningError" not in server.output()


def test_sigterm_abandons_a_job_that_outlasts_the_deadline(otlp_receiver, tmp_path):
    deadline_s = 1.0
    server, code, took, _ = _sigterm_during_a_run(otlp_receiver, tmp_path, job_s=120, deadline_s=deadline_s)
    assert code == 0, server.output()
    # The job would run 120 s: the worker left after the 1 s deadline and the flush.
    assert took < deadline_s * GENEROUS + 5, f"gunicorn took {took:.1f} s to stop\n{server.output()}"
    assert otlp_receiver.wait_for(lambda r: _ticks(r), timeout=10), server.output()
    [span] = _ticks(otlp_receiver)
    assert span.attributes["job.outcome"] == "abandoned"
    assert span.status_code == 2
    assert "still running after" in server.output()
