"""Bounded shutdown: with an unreachable collector, a process exits within a
small multiple of OTEL_RENDER_SHUTDOWN_TIMEOUT_S after its work is done, and
what the collector could receive is still flushed when it is reachable.

(Plain ``opentelemetry-instrument`` with ``opentelemetry-distro`` needs about
12 s for the same program here; ``make bench`` measures both side by side, each
in its own virtualenv.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, venv_bin

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
DEADLINE_S = 0.5
GENEROUS = 6  # the bound asserted is GENEROUS x the configured deadline


def run_until_exit(env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run the workload under opentelemetry-instrument; seconds from WORK-DONE to exit."""
    command = [venv_bin("opentelemetry-instrument"), sys.executable, str(APPS / "exit_workload.py")]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full_env.update(env)
    process = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    done_at = time.monotonic()
    assert line.strip() == "WORK-DONE", process.communicate(timeout=60)
    stdout, stderr = process.communicate(timeout=60)
    exited_after = time.monotonic() - done_at
    return exited_after, subprocess.CompletedProcess(command, process.returncode, line + stdout, stderr)


def test_unreachable_collector_costs_at_most_the_deadline():
    exited_after, result = run_until_exit(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": str(DEADLINE_S),
        }
    )
    assert result.returncode == 0, result.stderr
    assert exited_after < DEADLINE_S * GENEROUS, f"exit took {exited_after:.2f} s\n{result.stderr}"
    assert "telemetry flush did not finish within 0.5 s" in result.stderr


def test_reachable_collector_gets_the_final_flush(otlp_receiver):
    # Long export intervals: only the final flush at exit can deliver these.
    exited_after, result = run_until_exit(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": "5",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }
    )
    assert result.returncode == 0, result.stderr
    assert [span.name for span in otlp_receiver.spans()] == ["work"]
    assert otlp_receiver.latest_sum("work.done") == 1


def test_gunicorn_sigterm_exits_within_the_deadline_with_an_unreachable_collector():
    port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": str(DEADLINE_S),
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    command = gunicorn_command("pipeline_app:app", port=port, workers=2, preload=True)
    with AppProcess(command, env=env, cwd=APPS) as server:
        server.wait_http(f"http://127.0.0.1:{port}/")
        for _ in range(4):  # leave spans queued in the workers
            server.wait_http(f"http://127.0.0.1:{port}/")
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
    assert code == 0, server.output()
    # Workers flush in parallel, then the master: two deadlines plus gunicorn's own steps.
    assert took < 2 * DEADLINE_S * GENEROUS, f"gunicorn took {took:.2f} s to stop\n{server.output()}"
