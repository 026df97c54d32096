"""``/health`` latency: in process and under concurrent load, next to a plain
route of the same app, reported as ratios.

- In process: ``bench/health_app.py`` called as a WSGI app (no server), per
  call: the app's own ``/plain`` route, ``/health`` (served from the cached
  evaluation), and for scale ``/api/health`` and ``/api/metrics`` with the
  token. Run in the otel-render virtualenv under ``otel_render.configure()``.
- Under load: the same app under ``opentelemetry-instrument gunicorn -w 2``
  (sync workers) on loopback, hammered alternately on ``/plain`` and
  ``/health`` by ``wrk`` (Debian's package, installed with apt-get when
  missing and we are root) or else by a Python thread pool; requests per
  second and latency percentiles.

Both routes run in the same process under the same instrumentation, so the
ratio is the cost of answering health from otel-render's cache rather than
from a trivial app route. Run from a temporary directory, never the repo root.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from venvs import ensure_venv, fingerprint, otel_render_requirements

BENCH = Path(__file__).resolve().parent
TOKEN = "bench-9f86d081884c7d659a2feaa0c55ad015"
LOAD_SECONDS = float(os.environ.get("BENCH_HEALTH_SECONDS", "5"))
CONNECTIONS = 8
ROUNDS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(
        {
            "OTEL_SERVICE_NAME": "bench-health",
            "OTEL_RENDER_TOKEN": TOKEN,
            "OTEL_RENDER_BACKEND": "none",
            "PYTHONPATH": str(BENCH),
        }
    )
    return env


def in_process(python: Path, cwd: str) -> dict[str, float]:
    result = subprocess.run(
        [str(python), str(BENCH / "health_inprocess.py"), TOKEN],
        env=bench_env(),
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def find_wrk() -> str | None:
    wrk = shutil.which("wrk")
    if wrk or os.geteuid() != 0 or not shutil.which("apt-get"):
        return wrk
    print("[bench] installing Debian's wrk for the load test", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, **quiet)
    return shutil.which("wrk")


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(match.group(1)) * _WRK_UNITS[match.group(2)] if match else float("nan")


def load_with_wrk(wrk: str, url: str) -> dict[str, float]:
    output = subprocess.run(
        [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{LOAD_SECONDS:g}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=LOAD_SECONDS + 60,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": rate,
        "p50_ms": _seconds(percentiles.get("50", "")) * 1000,
        "p99_ms": _seconds(percentiles.get("99", "")) * 1000,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def load_with_threads(url: str) -> dict[str, float]:
    host, port_path = url.removeprefix("http://").split(":", 1)
    port, path = port_path.split("/", 1)
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_SECONDS

    def worker() -> None:
        mine = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("GET", "/" + path)
            connection.getresponse().read()
            connection.close()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "rps": len(latencies) / LOAD_SECONDS,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "non_2xx": 0,
    }


def under_load(bin_dir: Path, cwd: str) -> tuple[str, dict[str, dict[str, float]]]:
    port = free_port()
    command = [
        str(bin_dir / "opentelemetry-instrument"),
        str(bin_dir / "gunicorn"),
        "-w",
        "2",
        "-k",
        "sync",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "health_app:app",
    ]
    server = subprocess.Popen(command, env=bench_env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the benchmark app did not start")
            time.sleep(0.1)
        time.sleep(1.0)  # let both workers boot and evaluate once
        wrk = find_wrk()
        tool = "wrk" if wrk else "python threads"
        samples: dict[str, list[dict[str, float]]] = {"/plain": [], "/health": []}
        for _ in range(ROUNDS):  # interleaved, so load on the machine hits both alike
            for path in samples:
                url = f"http://127.0.0.1:{port}{path}"
                samples[path].append(load_with_wrk(wrk, url) if wrk else load_with_threads(url))
        return tool, {
            path: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            for path, runs in samples.items()
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> dict[str, float]:
    bin_dir = ensure_venv(f"otel-render-{fingerprint()}", otel_render_requirements("gunicorn>=21"))
    with tempfile.TemporaryDirectory() as cwd:
        calls = in_process(bin_dir / "python", cwd)
        tool, load = under_load(bin_dir, cwd)

    print("\n== /health latency, in process (WSGI call, median of 7 rounds)")
    for path, micros in calls.items():
        print(f"  {path:16s} {micros:9.1f} us per call   ({micros / calls['/plain']:.1f}x the plain route)")
    setup = f"{CONNECTIONS} connections, {LOAD_SECONDS:g} s x {ROUNDS} rounds, {tool}"
    print(f"\n== /health under load: gunicorn -w 2 (sync), {setup}")
    for path, figures in load.items():
        print(
            f"  {path:8s} {figures['rps']:8.0f} req/s   p50 {figures['p50_ms']:6.2f} ms"
            f"   p99 {figures['p99_ms']:6.2f} ms   non-2xx {figures['non_2xx']:.0f}"
        )
    rps_ratio = load["/health"]["rps"] / load["/plain"]["rps"]
    p99_ratio = load["/health"]["p99_ms"] / load["/plain"]["p99_ms"]
    in_process_ratio = calls["/health"] / calls["/plain"]
    print(f"  /health / plain: throughput {rps_ratio:.2f}x, p99 {p99_ratio:.2f}x; in process {in_process_ratio:.1f}x")
    return {
        **{f"inprocess_us[{path}]": value for path, value in calls.items()},
        **{f"load_{key}[{path}]": value for path, figures in load.items() for key, value in figures.items()},
        "health_inprocess_ratio": in_process_ratio,
        "health_load_rps_ratio": rps_ratio,
        "health_load_p99_ratio": p99_ratio,
    }


if __name__ == "__main__":
    main()
