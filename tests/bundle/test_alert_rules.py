"""The Prometheus alert rules: valid for promtool, unit-tested by promtool
(each alert fires on a synthetic series and stays silent on a healthy one),
and written against documented metrics only.

promtool comes from Debian's prometheus package (``make services`` installs it
with scripts/ensure-promtool.sh). Without it the promtool tests skip locally
and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bundle import checks, contract

ALERTS = contract.ROOT / "dashboards" / "alerts"
RULES = ALERTS / "otel-render.rules.yaml"
RULE_TESTS = ALERTS / "otel-render.rules.test.yaml"

EXPECTED_ALERTS = {
    "OtelRenderMemoryHigh",
    "OtelRenderHighErrorRate",
    "OtelRenderSlowRequests",
    "OtelRenderDatabaseDown",
    "OtelRenderSchedulerStale",
    "OtelRenderTelemetryDropping",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package prometheus; scripts/ensure-promtool.sh installs it)"
        if _in_ci():
            pytest.fail(f"{message}. CI must run `make services` before the tests.", pytrace=False)
        pytest.skip(f"{message}; run the tests with `make test`")
    return path


def _run(promtool: str, *args: str, cwd: Path = ALERTS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(promtool):
    result = _run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_catch_a_broken_threshold(promtool, tmp_path):
    # Raise the memory threshold past the synthetic 90 %: the firing test must now fail.
    rules = RULES.read_text()
    assert "otel_render_instance_memory_utilization_ratio) > 0.8" in rules
    (tmp_path / RULES.name).write_text(rules.replace("utilization_ratio) > 0.8", "utilization_ratio) > 0.95"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "OtelRenderMemoryHigh" in result.stdout + result.stderr


def test_promtool_rejects_an_invalid_rule(promtool, tmp_path):
    broken = tmp_path / "broken.rules.yaml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum by (job (up)\n")
    result = _run(promtool, "check", "rules", str(broken))
    assert result.returncode != 0


def test_the_issue_s_six_alerts_are_there_with_severity_and_annotations():
    rules = _rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule.get("for"), f"{rule['alert']} fires on a single evaluation; give it a `for`"


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def test_rules_and_their_test_series_use_documented_metrics_and_labels():
    documented = contract.dashboard_contract()
    problems = []
    for rule in _rules():
        problems += checks.promql_problems(rule["expr"], f"{RULES.name} {rule['alert']}", documented)
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in case["input_series"]:
            problems += checks.promql_problems(series["series"], f"{RULE_TESTS.name} {case['name']}", documented)
    assert problems == []


def test_the_reference_check_catches_an_undocumented_metric_and_label():
    documented = contract.dashboard_contract()
    problems = checks.promql_problems(
        'sum by (job, route) (rate(http_server_requests_total{http_method="GET"}[5m]))'
        " / on(job) sum by (job) (rate(http_server_request_duration_seconds_count{http_method=\"GET\"}[5m]))"
        " > bogus_fn(otel_render_db_status_ratio)",
        "mutant",
        documented,
    )
    text = "\n".join(problems)
    assert "http_server_requests_total is not a documented metric" in text
    assert "http_server_request_duration_seconds_count has no label 'http_method'" in text
    assert "no metric in the expression has the label 'route'" in text
    assert "bogus_fn() is not a PromQL function" in text
    # le exists on _bucket only
    assert checks.promql_problems("sum by (le) (rate(http_server_request_duration_seconds_count[5m]))", "x", documented)
    assert not checks.promql_problems("sum by (le) (rate(http_server_request_duration_seconds_bucket[5m]))", "x", documented)
