"""The per-process loop: it publishes this process, merges the instance's
health from every live process's report, and leaves the right things behind
at exit and after fork."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from otel_render.config import Settings
from otel_render.health import DEGRADED, HEALTHY, UNHEALTHY, HealthCheckResult
from otel_render.local.monitor import InstanceMonitor, current_process_info
from otel_render.local.reader import LocalMetricReader
from otel_render.local.snapshot import ProcessInfo, ProcessSnapshot
from otel_render.local.store import InstanceStore, process_start_time
from otel_render.runtime import RuntimeMeters, create_instruments


@pytest.fixture
def other_process():
    """A real, live process whose snapshot the test writes on its behalf."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield ProcessInfo(child.pid, process_start_time(child.pid), "srv-w1", "worker", 1)
    finally:
        child.kill()
        child.wait()


def make_monitor(tmp_path, checks, owner=False, environ=None):
    settings, _ = Settings.from_environ(environ or {})
    reader = LocalMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    store = InstanceStore(tmp_path / "base" / "instance-x")
    monitor = InstanceMonitor(
        reader,
        settings,
        process_info=lambda: current_process_info(lambda: "srv-w0"),
        store_factory=lambda _settings: (store, owner),
        checks=lambda: checks,
    )
    return monitor, store, provider


def test_a_tick_publishes_this_process_with_its_check_results(tmp_path):
    monitor, store, provider = make_monitor(tmp_path, {"database": lambda now: HealthCheckResult(HEALTHY, output="ok")})
    provider.get_meter("app").create_counter("app.requests").add(3)
    monitor.tick()
    (path,) = store.directory.glob("p-*.json")
    published = ProcessSnapshot.from_json(json.loads(path.read_text()))
    assert published.checks["database"]["output"] == "ok"
    assert published.series["app.requests"].points[0].value == 3
    assert monitor.status().status == HEALTHY
    provider.shutdown()


def test_the_instance_is_unhealthy_when_the_process_running_the_schedulers_says_so(tmp_path, other_process):
    monitor, store, provider = make_monitor(
        tmp_path, {"schedulers": lambda now: HealthCheckResult(HEALTHY, output="jobs run in srv-w1")}
    )
    store.publish(
        ProcessSnapshot(
            other_process, 1.0, {}, {"schedulers": {"status": UNHEALTHY, "output": "dead, restarts exhausted"}}
        )
    )
    monitor.tick()
    status = monitor.status()
    assert status.status == UNHEALTHY
    assert status.checks["schedulers"].output == "srv-w1: dead, restarts exhausted"
    provider.shutdown()


def test_a_worker_that_has_exited_no_longer_votes(tmp_path):
    monitor, store, provider = make_monitor(tmp_path, {})
    gone = ProcessInfo(2**22 + 999, 1000.0, "srv-w1")  # no such process
    store.publish(ProcessSnapshot(gone, 1.0, {}, {"schedulers": {"status": UNHEALTHY, "output": "was recycled"}}))
    monitor.tick()
    assert monitor.status().status == HEALTHY
    provider.shutdown()


def test_critical_memory_fails_the_instance_after_its_grace(tmp_path):
    checks = {}
    monitor, _, provider = make_monitor(
        tmp_path, checks, environ={"OTEL_RENDER_MEMORY_LIMIT_MB": "1", "OTEL_RENDER_MEMORY_CRITICAL_GRACE_S": "0"}
    )
    create_instruments(provider, RuntimeMeters(monitor.settings))
    checks["memory"] = monitor.memory_check  # the built-in check reads the view the tick merges
    monitor.tick()
    assert monitor.status().status == UNHEALTHY
    assert monitor.status().checks["memory"].status == UNHEALTHY
    provider.shutdown()


def test_at_exit_a_worker_publishes_once_more_and_the_owner_removes_the_directory(tmp_path):
    monitor, store, provider = make_monitor(tmp_path, {})
    counter = provider.get_meter("app").create_counter("app.requests")
    counter.add(1)
    monitor.tick()
    counter.add(4)
    monitor.on_exit(0.0)
    assert sum(point.value for point in store.read().points("app.requests")) == 5
    owner, owner_store, owner_provider = make_monitor(tmp_path, {}, owner=True)
    owner.tick()
    owner.on_exit(0.0)
    assert not owner_store.directory.exists()
    provider.shutdown()
    owner_provider.shutdown()


def test_after_fork_the_child_keeps_the_last_status_until_its_own_evaluation(tmp_path):
    monitor, _, provider = make_monitor(tmp_path, {"database": lambda now: HealthCheckResult(UNHEALTHY)})
    monitor.tick()
    assert monitor.status().status == DEGRADED
    monitor.reset_after_fork()
    assert monitor.status().status == DEGRADED and monitor.latest_view() is None
    provider.shutdown()
