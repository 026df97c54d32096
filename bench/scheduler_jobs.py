"""Cost of one job run: plain ``opentelemetry-instrument`` (which does not
instrument APScheduler) against otel-render (a span, its attributes, three
meter points and the bookkeeping of the supervisor), in the same run.

Both sides export over OTLP/HTTP to a closed loopback port, as a misconfigured
collector would; spans go through the SDK's batch processor either way.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import tempfile
from pathlib import Path

from venvs import ensure_venv, fingerprint, installed_version, otel_render_requirements, plain_otel_requirements

WORKLOAD = Path(__file__).with_name("workload_jobs.py")
ROUNDS = int(os.environ.get("BENCH_JOB_ROUNDS", "3"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def per_run_us(command: list[str], env: dict[str, str], cwd: str) -> float:
    result = subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(result.stdout.strip().splitlines()[-1])["us_per_run"]


def main() -> dict[str, float]:
    apscheduler = f"apscheduler=={installed_version('apscheduler')}"
    plain_bin = ensure_venv(f"plain-otel-aps-{fingerprint()}", plain_otel_requirements(apscheduler))
    ours_bin = ensure_venv(f"otel-render-aps-{fingerprint()}", otel_render_requirements(apscheduler))
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    samples: dict[str, list[float]] = {"plain opentelemetry-instrument": [], "otel-render": []}
    # Run outside the source tree: its egg-info would put our entry points on the plain side's path.
    with tempfile.TemporaryDirectory() as cwd:
        env = {
            **base_env,
            "OTEL_SERVICE_NAME": "bench-jobs",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
            "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": "1",
            "OTEL_RENDER_INSTANCE_DIR": os.path.join(cwd, "instance"),
        }
        sides = {
            "plain opentelemetry-instrument": [
                str(plain_bin / "opentelemetry-instrument"),
                str(plain_bin / "python"),
                str(WORKLOAD),
            ],
            "otel-render": [str(ours_bin / "opentelemetry-instrument"), str(ours_bin / "python"), str(WORKLOAD)],
        }
        for _ in range(ROUNDS):  # interleaved, so load on the machine hits both sides alike
            for name, command in sides.items():
                samples[name].append(per_run_us(command, env, cwd))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    plain, ours = medians["plain opentelemetry-instrument"], medians["otel-render"]
    print(f"\n== one APScheduler job run through the executor (median of {ROUNDS} rounds)")
    for name, values in samples.items():
        shown = ", ".join(f"{value:.1f}" for value in values)
        print(f"  {name:32s} {medians[name]:7.1f} us/run   ({shown})")
    print(f"  otel-render adds {ours - plain:.1f} us per run ({ours / plain:.2f}x)")
    return {
        "job_us[plain]": plain,
        "job_us[otel-render]": ours,
        "job_added_us": ours - plain,
        "job_ratio": ours / plain,
    }


if __name__ == "__main__":
    main()
