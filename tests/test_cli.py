"""``otel-render doctor`` run as users run it: a real process, a real endpoint."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support.otlp_receiver import OTLPReceiver
from support.processes import free_port, venv_bin

TOKEN = "glc_very_secret_token_value"


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HONEYCOMB_", "RENDER"))}
    full_env.update(env)
    result = subprocess.run(
        [venv_bin("otel-render"), "doctor", "--json", *args], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def messages(report: dict, check: str) -> list[str]:
    return [finding["message"] for finding in report["findings"] if finding["check"] == check]


def test_local_only_is_usable(tmp_path):
    code, report, _ = doctor({})
    assert code == 0
    assert any("telemetry stays local" in m for m in messages(report, "connectivity"))
    assert any("distro 'otel_render' will load" in m for m in messages(report, "activation"))


def test_reachable_collector_is_usable(otlp_receiver):
    code, report, _ = doctor({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint})
    assert code == 0, report
    probes = messages(report, "connectivity")
    assert any("/v1/traces answered 200" in m for m in probes)
    assert {r.path for r in otlp_receiver.requests} == {"/v1/traces", "/v1/metrics"}


def test_unreachable_collector_fails_with_the_reason():
    code, report, _ = doctor({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert code == 1
    assert any("unreachable" in m and "ConnectionRefusedError" in m for m in messages(report, "connectivity"))


def test_refused_credentials_fail_and_the_token_is_masked():
    with OTLPReceiver(status=401) as receiver:
        code, report, _ = doctor(
            {
                "OTEL_RENDER_GRAFANA_ENDPOINT": receiver.endpoint,
                "OTEL_RENDER_GRAFANA_INSTANCE_ID": "42",
                "OTEL_RENDER_GRAFANA_TOKEN": TOKEN,
            }
        )
        sent = {r.header("authorization") for r in receiver.requests}
    assert code == 1
    assert any("refused the credentials (401)" in m for m in messages(report, "connectivity"))
    assert len(sent) == 1 and next(iter(sent)).startswith("Basic ")


def test_bad_configuration_fails_and_names_the_variable():
    code, report, _ = doctor({"OTEL_RENDER_SHUTDOWN_TIMEOUT_S": "soon"}, "--no-connect")
    assert code == 1
    assert any(m.startswith("OTEL_RENDER_SHUTDOWN_TIMEOUT_S='soon' is not valid") for m in messages(report, "configuration"))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_PYTHON_CONFIGURATOR": "someone_else"}, "OTEL_PYTHON_CONFIGURATOR='someone_else' names no installed"),
        ({"OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED=true"),
    ],
)
def test_inactive_otel_render_exits_2(env, expected):
    code, report, _ = doctor(env, "--no-connect")
    assert code == 2
    assert any(expected in m for m in messages(report, "activation"))


def test_report_shows_platform_limits_and_resource():
    env = {"RENDER": "true", "RENDER_SERVICE_NAME": "shop", "RENDER_CPU_COUNT": "0.5", "OTEL_RENDER_MEMORY_LIMIT_MB": "512"}
    code, report, _ = doctor(env, "--no-connect")
    assert code == 0
    platform = " ".join(messages(report, "platform"))
    assert "platform: render" in platform
    assert '"service.name": "shop"' in platform
    assert "limit 512 MiB (OTEL_RENDER_MEMORY_LIMIT_MB)" in platform
    assert "cpu: 0.5 (RENDER_CPU_COUNT)" in platform


def test_variables_lists_every_declared_variable():
    from otel_render.config import declared_variables

    result = subprocess.run([venv_bin("otel-render"), "variables"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    listed = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert listed == {variable.env for variable in declared_variables()}
