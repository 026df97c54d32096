"""``make demo``: run the example app the way Render would, send it some
traffic, and print where to look.

Starts ``opentelemetry-instrument gunicorn -w 2 --preload examples.app:app``
on 127.0.0.1:$DEMO_PORT (default 8000) with SQLite in ``.demo/``, sends a mix
of requests (lookups, a create, a 404, a failure), waits for the app's
``count-items`` job to run (read from ``/api/metrics``, which the demo makes
public with ``OTEL_RENDER_PUBLIC_ENDPOINTS=true``), prints what came back and
the local endpoint URLs with their status, then keeps serving until Ctrl-C.
``--once`` stops the server after that instead and reports how long its exit
took.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCAL_ENDPOINTS = ("/health", "/api/health", "/api/metrics", "/api/diagnostics")
JOB_ID = "count-items"


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_ready(port: int, server: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the example app exited with {server.returncode}; see its output above")
        try:
            request(port, "GET", "/items/1")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the example app did not answer on port {port} within {timeout_s:.0f} s")


def job_runs(port: int) -> dict[str, int]:
    """The example job's runs by outcome, as ``/api/metrics`` shows them for the instance."""
    status, body = request(port, "GET", "/api/metrics")
    if status != 200:
        return {}
    for job in json.loads(body)["schedulers"]["jobs"]:
        if job["job"] == JOB_ID:
            return job["runs"]
    return {}


def wait_for_job(port: int, timeout_s: float) -> dict[str, int]:
    """Wait until the job has run once (its first run is one interval after the start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = job_runs(port)
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the traffic")
    args = parser.parse_args()

    port = int(os.environ.get("DEMO_PORT", "8000"))
    data_dir = ROOT / ".demo"
    data_dir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data_dir / 'example.db'}",
        "OTEL_SERVICE_NAME": os.environ.get("OTEL_SERVICE_NAME", "otel-render-example"),
        "OTEL_RENDER_PUBLIC_ENDPOINTS": "true",
        "EXAMPLE_JOB_INTERVAL_S": os.environ.get("EXAMPLE_JOB_INTERVAL_S", "5"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        str(BIN / "opentelemetry-instrument"),
        str(BIN / "gunicorn"),
        "-w", "2", "--preload",
        "-b", f"127.0.0.1:{port}",
        "examples.app:app",
    ]
    print("$ " + " ".join(command[:1] + ["gunicorn"] + command[2:]), flush=True)
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_ready(port, server)
        statuses: dict[int, int] = {}
        traffic = [("GET", f"/items/{n % 20 + 1}", None) for n in range(40)]
        traffic += [("GET", "/", None), ("POST", "/items", {"name": "from the demo"})]
        traffic += [("GET", "/items/9999", None), ("GET", "/fail", None), ("GET", "/slow?ms=50", None)]
        for method, path, body in traffic:
            status, _ = request(port, method, path, body)
            statuses[status] = statuses.get(status, 0) + 1
        print(f"\nsent {len(traffic)} requests: " + ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items())))
        interval_s = float(env["EXAMPLE_JOB_INTERVAL_S"])
        runs = wait_for_job(port, timeout_s=3 * interval_s + 30)
        if runs:
            print(f"\njob {JOB_ID}: " + ", ".join(f"{count} x {outcome}" for outcome, count in sorted(runs.items())))
        else:
            print(f"\njob {JOB_ID}: no run yet (see the output above)")
        print("\nlocal endpoints:")
        for path in LOCAL_ENDPOINTS:
            status, _ = request(port, "GET", path)
            print(f"  http://127.0.0.1:{port}{path}  ({status})")
        print(f"\napp: http://127.0.0.1:{port}/items/1")
        if args.once:
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
            print(f"\nstopped with SIGTERM: exit code {code} after {time.monotonic() - started:.1f} s")
            return 0 if code == 0 else 1
        print("\nserving until Ctrl-C")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
