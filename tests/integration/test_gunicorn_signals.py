"""A SIGTERM that reaches a gunicorn worker while it boots is not lost.

Between ``fork`` and the worker's own signal setup the child still has the
master's handler, which only queues the signal for the master's loop; a
SIGTERM the master sends in that window (a deploy, or the master stopping
while it replaces a worker) used to be dropped, and the master then waited
its whole graceful timeout before killing the worker. The window is short
with plain gunicorn, but every after-fork hook (the OpenTelemetry SDK's,
ours, the app's) widens it; otel-render holds those signals back until the
worker is ready for them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, wait_until

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
GRACEFUL_TIMEOUT_S = 20



def test_sigterm_while_a_worker_boots_stops_it_promptly():
    port = free_port()
    command = gunicorn_command(
        "slow_boot_app:app",
        port=port,
        workers=1,
        preload=True,
        extra=["--graceful-timeout", str(GRACEFUL_TIMEOUT_S)],
    )
    with AppProcess(command, env={"SLOW_BOOT_S": "2"}, cwd=APPS) as server:
        # The worker exists and is still inside its 2 s after-fork hook.
        assert wait_until(server.children, 30), server.output()
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
    assert code == 0, server.output()
    # A lost SIGTERM costs the whole graceful timeout; a delivered one the rest of the boot.
    assert took < GRACEFUL_TIMEOUT_S / 2, f"gunicorn took {took:.1f} s to stop\n{server.output()}"
