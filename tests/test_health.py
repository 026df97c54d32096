"""The health model: memory and performance rules with an injected clock, the
liveness rule, the merge of the processes' reports, and checks that fail,
hang or leak secrets."""

from __future__ import annotations

import threading
import time

import pytest

from otel_render import health
from otel_render.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckRunner,
    HealthCheckResult,
    MemoryCheck,
    build_status,
    instance_status,
    liveness_names,
    memory_result,
    merge_process_checks,
    performance_result,
)

MIB = 1024 * 1024
LIVENESS = liveness_names(("memory", "schedulers"))


def memory(utilization, now, critical_since=None, grace_s=30.0):
    return memory_result(
        utilization=utilization,
        used=int((utilization or 0) * 512 * MIB),
        limit=512 * MIB,
        now=now,
        critical_since=critical_since,
        warn_percent=80,
        critical_percent=95,
        grace_s=grace_s,
    )


def test_memory_is_healthy_then_degraded_from_80_percent():
    result, since = memory(0.5, now=100.0)
    assert result.status == HEALTHY and since is None
    assert result.observedValue == 50.0 and result.observedUnit == "percent"
    result, since = memory(0.85, now=100.0)
    assert result.status == DEGRADED and since is None
    assert "85.0%" in result.output and "512 MiB" in result.output


def test_critical_memory_gives_recovery_its_grace_then_turns_unhealthy():
    check = MemoryCheck(lambda: (0.97, 497 * MIB, 512 * MIB), warn_percent=80, critical_percent=95, grace_s=30)
    assert check(1000.0).status == DEGRADED
    assert check(1029.0).status == DEGRADED
    late = check(1030.0)
    assert late.status == UNHEALTHY and "recovery has not brought it back" in late.output
    # Recovery brings it back: healthy again, and the grace starts over next time.
    check._utilization = lambda: (0.5, 256 * MIB, 512 * MIB)
    assert check(1031.0).status == HEALTHY and check.critical_since is None
    check._utilization = lambda: (0.96, 491 * MIB, 512 * MIB)
    assert check(1040.0).status == DEGRADED


def test_without_grace_critical_memory_is_unhealthy_at_once():
    result, since = memory(0.99, now=5.0, grace_s=0)
    assert result.status == UNHEALTHY and since == 5.0


def test_unknown_memory_is_not_a_failure():
    result, _ = memory(None, now=1.0)
    assert result.status == HEALTHY and result.observedValue is None


def perf(total, errors, p95):
    return performance_result(
        total=total,
        errors=errors,
        p95_s=p95,
        window_s=300,
        now=1.0,
        p95_limit_s=2.0,
        error_rate_limit=0.05,
        min_requests=20,
    )


def test_performance_degrades_on_latency_or_errors_and_fails_on_twice_the_error_limit():
    assert perf(0, 0, None).status == HEALTHY
    assert perf(100, 1, 0.2).status == HEALTHY
    slow = perf(100, 0, 2.5)
    assert slow.status == DEGRADED and "p95 above 2 s" in slow.output and slow.observedValue == 2.5
    assert perf(100, 7, 0.2).status == DEGRADED
    assert perf(100, 10, 0.2).status == UNHEALTHY
    # Too few requests say nothing about a rate.
    assert perf(5, 5, 0.2).status == HEALTHY


def test_only_liveness_checks_can_make_the_instance_unhealthy():
    database_down = {"database": HealthCheckResult(UNHEALTHY), "memory": HealthCheckResult(HEALTHY)}
    assert instance_status(database_down, LIVENESS) == DEGRADED
    memory_gone = {"database": HealthCheckResult(HEALTHY), "memory": HealthCheckResult(UNHEALTHY)}
    assert instance_status(memory_gone, LIVENESS) == UNHEALTHY
    assert instance_status(database_down, liveness_names(("memory", "database"))) == UNHEALTHY
    assert instance_status(memory_gone, liveness_names(("none",))) == DEGRADED
    assert instance_status({}, LIVENESS) == HEALTHY


def test_the_instance_takes_the_worst_report_and_says_which_process_made_it():
    merged = merge_process_checks(
        [
            ("w0", {"schedulers": HealthCheckResult(HEALTHY, output="runs in w1")}),
            (
                "w1",
                {
                    "schedulers": HealthCheckResult(UNHEALTHY, output="scheduler dead"),
                    "database": HealthCheckResult(HEALTHY),
                },
            ),
        ]
    )
    assert merged["schedulers"].status == UNHEALTHY and merged["schedulers"].output == "w1: scheduler dead"
    assert merged["database"].status == HEALTHY


def test_the_model_always_lists_the_seeds_four_components_then_the_others():
    status = build_status(
        checks={"cache": HealthCheckResult(DEGRADED, output="slow"), "memory": HealthCheckResult(HEALTHY)},
        liveness=LIVENESS,
        now=1_700_000_010.0,
        started=1_700_000_000.0,
        platform="render",
        metrics={"memoryUsage": {}},
    )
    assert list(status.checks) == ["database", "memory", "schedulers", "performance", "cache"]
    assert status.checks["database"].output.startswith("not checked")
    assert status.status == DEGRADED and status.uptime == 10.0
    summary = status.to_dict(details=False)
    assert summary == {
        "status": DEGRADED,
        "timestamp": "2023-11-14T22:13:30.000Z",
        "checks": {name: {"status": result.status} for name, result in status.checks.items()},
    }
    assert status.to_dict(details=True)["checks"]["cache"]["output"] == "slow"


def test_a_check_that_hangs_is_reported_and_never_run_twice_at_once():
    release = threading.Event()
    calls = []

    def hanging(now):
        calls.append(now)
        release.wait(10)
        return HealthCheckResult(HEALTHY, output="answered late")

    runner = CheckRunner(timeout_s=0.05)
    started = time.monotonic()
    first = runner.run({"database": hanging}, 1.0)
    assert time.monotonic() - started < 5  # bounded by the timeout, not by the check
    assert first["database"].status == DEGRADED and "has not answered" in first["database"].output
    second = runner.run({"database": hanging}, 2.0)
    assert second["database"].status == DEGRADED and calls == [1.0]
    release.set()  # the database answers again: the next evaluations see its result
    deadline = time.monotonic() + 10
    result = second["database"]
    while result.output != "answered late" and time.monotonic() < deadline:
        result = runner.run({"database": hanging}, 3.0)["database"]
    assert result.status == HEALTHY and result.output == "answered late"


def test_a_check_that_raises_or_returns_nonsense_degrades_and_its_secrets_are_scrubbed():
    def raising(now):
        raise RuntimeError("cannot connect to postgresql://app:s3cret-pw@db:5432/shop")

    def leaking(now):
        return HealthCheckResult(UNHEALTHY, "password=hunter2", output="dsn host=db password=hunter2 user=app")

    results = CheckRunner(timeout_s=5).run({"a": raising, "b": leaking, "c": lambda now: "fine"}, 1.0)
    assert results["a"].status == DEGRADED and "s3cret-pw" not in results["a"].output
    assert "RuntimeError" in results["a"].output
    assert results["b"].status == UNHEALTHY
    assert "hunter2" not in results["b"].output and "hunter2" not in str(results["b"].observedValue)
    assert results["c"].status == DEGRADED and "returned str" in results["c"].output
    assert all(result.time for result in results.values())


def test_registered_checks_can_be_replaced_and_removed():
    def check(now):
        return HealthCheckResult(HEALTHY)

    health.register_check("test-only", check)
    try:
        assert health.registered_checks()["test-only"] is check
    finally:
        health.unregister_check("test-only")
    assert "test-only" not in health.registered_checks()


@pytest.mark.parametrize("status", ["ok", None, "UNHEALTHY"])
def test_a_malformed_published_result_reads_as_degraded(status):
    assert HealthCheckResult.from_dict({"status": status}).status == DEGRADED
