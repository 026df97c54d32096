"""Exit time with an unreachable collector: plain ``opentelemetry-instrument``
(with ``opentelemetry-distro``) against otel-render, measured in the same run.

Each side runs the same tiny program (one span, one counter, then exit) under
``opentelemetry-instrument`` with OTLP/HTTP pointed at a closed loopback port,
in its own virtualenv. A bare ``python`` run of the program is the floor.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from venvs import ensure_venv, fingerprint, otel_render_requirements, plain_otel_requirements

WORKLOAD = Path(__file__).with_name("workload_exit.py")
RUNS = int(os.environ.get("BENCH_EXIT_RUNS", "3"))
SHUTDOWN_TIMEOUT_S = "3"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exit_seconds(command: list[str], env: dict[str, str], cwd: str) -> float:
    started = time.monotonic()
    subprocess.run(
        command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
    )
    return time.monotonic() - started


def main() -> dict[str, float]:
    plain_bin = ensure_venv(f"plain-otel-{fingerprint()}", plain_otel_requirements())
    ours_bin = ensure_venv(f"otel-render-{fingerprint()}", otel_render_requirements())
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env = {
        **base_env,
        "OTEL_SERVICE_NAME": "bench-exit",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": SHUTDOWN_TIMEOUT_S,
    }
    sides = {
        "bare python": [str(plain_bin / "python"), str(WORKLOAD)],
        "plain opentelemetry-instrument": [str(plain_bin / "opentelemetry-instrument"), str(plain_bin / "python"), str(WORKLOAD)],
        "otel-render": [str(ours_bin / "opentelemetry-instrument"), str(ours_bin / "python"), str(WORKLOAD)],
    }
    samples: dict[str, list[float]] = {name: [] for name in sides}
    # Run outside the source tree: its otel_render.egg-info would otherwise
    # put our entry points on the plain side's path.
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(RUNS):  # interleaved, so load on the machine hits every side alike
            for name, command in sides.items():
                samples[name].append(exit_seconds(command, env, cwd))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n== exit time with an unreachable collector (median of {RUNS}, OTEL_RENDER_SHUTDOWN_TIMEOUT_S={SHUTDOWN_TIMEOUT_S})")
    for name, values in samples.items():
        shown = ", ".join(f"{value:.2f}" for value in values)
        print(f"  {name:32s} {medians[name]:6.2f} s   ({shown})")
    ratio = medians["otel-render"] / medians["plain opentelemetry-instrument"]
    print(f"  otel-render / plain: {ratio:.2f}x")
    return {**{f"exit_s[{name}]": value for name, value in medians.items()}, "exit_ratio": ratio}


if __name__ == "__main__":
    main()
