"""``make demo`` keeps working: the example app under opentelemetry-instrument
gunicorn -w 2 --preload answers the demo's traffic, its job runs, the four
local endpoints the demo prints answer 200 (the demo makes them public), and
it stops cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENDPOINTS = ("/health", "/api/health", "/api/metrics", "/api/diagnostics")


def test_demo_runs_the_example_app_and_stops():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    port = free_port()
    env["DEMO_PORT"] = str(port)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--once"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "sent 45 requests: 42 x 200, 1 x 201, 1 x 404, 1 x 500" in output
    assert re.search(r"job count-items: \d+ x success", output), output
    printed = dict(re.findall(rf"http://127\.0\.0\.1:{port}(/\S*)  \((\d+)\)", output))
    assert printed == {path: "200" for path in ENDPOINTS}, output
    assert "stopped with SIGTERM: exit code 0" in output
