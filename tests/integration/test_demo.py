"""``make demo`` keeps working: the example app under opentelemetry-instrument
gunicorn -w 2 --preload answers the demo's traffic and stops cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_example_app_and_stops(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["DEMO_PORT"] = str(free_port())
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--once"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "sent 45 requests: 42 x 200, 1 x 201, 1 x 404, 1 x 500" in output
    assert "stopped with SIGTERM: exit code 0" in output
