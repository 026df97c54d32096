"""Per-request overhead of web instrumentation: plain OpenTelemetry
(``opentelemetry-distro`` + the contrib Flask instrumentation) against
otel-render, each over the bare app, measured in the same run.

The app (``workload_wsgi.py``): Flask, one item lookup through SQLAlchemy on
SQLite, one log line per request, driven by in-process WSGI calls. Each side
runs in its own virtualenv at the same Flask/SQLAlchemy versions, with 100%
sampling and OTLP/HTTP exporters pointed at a loopback sink in this process
that answers every export at once. otel-render's side gets whatever
otel-render instruments (its SQLAlchemy spans too, where present); the contrib
side gets only the Flask instrumentation. A fourth side, otel-render with its
SQLAlchemy instrumentation disabled, is the like-for-like comparison with the
contrib side (web requests only). Runs are interleaved (one of each side per
round) and the medians compared:

    overhead = median(side) - median(bare)      ratio = otel-render / contrib

for wall time and for the CPU time of the whole process (export threads
included), which other work on a shared machine disturbs less. Knobs:
``BENCH_WSGI_REQUESTS`` (timed requests per run, 5000), ``BENCH_WSGI_WARMUP``
(1000), ``BENCH_WSGI_ROUNDS`` (7).
"""

from __future__ import annotations

import http.server
import json
import os
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

from venvs import ensure_venv, fingerprint, installed_version, otel_render_requirements, plain_otel_requirements

WORKLOAD = Path(__file__).with_name("workload_wsgi.py")
#: otel-render without its database layer: what the contrib side records, and more.
WEB_ONLY = "otel-render, web only"
REQUESTS = int(os.environ.get("BENCH_WSGI_REQUESTS", "5000"))
WARMUP = int(os.environ.get("BENCH_WSGI_WARMUP", "1000"))
ROUNDS = int(os.environ.get("BENCH_WSGI_ROUNDS", "7"))


class _Sink(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.received_bytes = 0
        self.lock = threading.Lock()


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.received_bytes += length  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def app_requirements() -> list[str]:
    return [f"flask=={installed_version('flask')}", f"sqlalchemy=={installed_version('sqlalchemy')}"]


def contrib_requirements() -> tuple[list[str], list[str]]:
    """Plain OpenTelemetry at exactly otel-render's versions, and the contrib Flask
    instrumentation at the newest release not newer than them, installed without
    its pins (its release can lag one beta behind the rest)."""
    contrib = installed_version("opentelemetry-instrumentation")
    pinned = plain_otel_requirements(
        f"opentelemetry-instrumentation-wsgi=={contrib}",
        f"opentelemetry-util-http=={contrib}",
        f"opentelemetry-semantic-conventions=={installed_version('opentelemetry-semantic-conventions')}",
    )
    return pinned, [f"opentelemetry-instrumentation-flask<={contrib}"]


def run_once(command: list[str], env: dict[str, str], cwd: str) -> dict[str, float]:
    completed = subprocess.run(
        command + [str(REQUESTS), str(WARMUP)], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}\n{completed.stderr}")
    last = [line for line in completed.stdout.splitlines() if line.startswith("{")][-1]
    result = json.loads(last)
    return {"wall": float(result["us_per_request"]), "cpu": float(result["cpu_us_per_request"])}


def versions(bin_dir: Path, names: list[str]) -> str:
    code = "import importlib.metadata as m, sys\nfor n in sys.argv[1:]:\n    try: print(n, m.version(n))\n    except Exception: pass"
    out = subprocess.run([str(bin_dir / "python"), "-c", code, *names], capture_output=True, text=True, check=True)
    return ", ".join(line.replace(" ", "==") for line in out.stdout.split("\n") if line)


def main() -> dict[str, float]:
    bare_bin = ensure_venv(f"wsgi-bare-{fingerprint()}", app_requirements())
    contrib_pinned, contrib_no_deps = contrib_requirements()
    contrib_bin = ensure_venv(f"wsgi-contrib-{fingerprint()}", contrib_pinned + app_requirements(), contrib_no_deps)
    ours_bin = ensure_venv(f"wsgi-otel-render-{fingerprint()}", otel_render_requirements(*app_requirements()))

    sink = _Sink()
    threading.Thread(target=sink.serve_forever, name="bench-sink", daemon=True).start()
    base_env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "RENDER"))}
    instrumented_env = {
        **base_env,
        "OTEL_SERVICE_NAME": "bench-wsgi",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
    }
    sides = {
        "bare": ([str(bare_bin / "python"), str(WORKLOAD)], base_env),
        "contrib": (
            [str(contrib_bin / "opentelemetry-instrument"), str(contrib_bin / "python"), str(WORKLOAD)],
            instrumented_env,
        ),
        "otel-render": (
            [str(ours_bin / "opentelemetry-instrument"), str(ours_bin / "python"), str(WORKLOAD)],
            instrumented_env,
        ),
        WEB_ONLY: (
            [str(ours_bin / "opentelemetry-instrument"), str(ours_bin / "python"), str(WORKLOAD)],
            {**instrumented_env, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "sqlalchemy"},
        ),
    }
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in sides}
    exported: dict[str, int] = {name: 0 for name in sides}
    # Outside the source tree, so the repo's egg-info cannot put our entry
    # points on the plain side's path.
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(ROUNDS):
            for name, (command, env) in sides.items():
                before = sink.received_bytes
                for measure, value in run_once(command, env, cwd).items():
                    samples[name][measure].append(value)
                exported[name] += sink.received_bytes - before
    sink.shutdown()

    print("\n== WSGI request overhead: Flask + SQLAlchemy/SQLite item lookup, one log line, 100% sampling")
    print(f"   {REQUESTS} timed requests per run after {WARMUP} warm-up, median of {ROUNDS} interleaved runs")
    print(
        f"   contrib side: {versions(contrib_bin, ['opentelemetry-sdk', 'opentelemetry-distro', 'opentelemetry-instrumentation-wsgi', 'opentelemetry-instrumentation-flask'])}"
    )
    print(
        f"   otel-render side: {versions(ours_bin, ['opentelemetry-sdk', 'opentelemetry-instrumentation', 'otel-render'])}"
    )
    sent = (f"{name} {exported[name] / ROUNDS / 1024:.0f} KiB" for name in sides if name != "bare")
    print("   exported per run: " + ", ".join(sent))
    figures: dict[str, float] = {}
    for measure, title in (("wall", "wall time"), ("cpu", "CPU time, all threads")):
        medians = {name: statistics.median(values[measure]) for name, values in samples.items()}
        overhead = {name: medians[name] - medians["bare"] for name in sides if name != "bare"}

        def ratio(name: str) -> float:
            return overhead[name] / overhead["contrib"] if overhead["contrib"] > 0 else float("nan")

        print(f"  -- {title}")
        for name, values in samples.items():
            shown = ", ".join(f"{value:.0f}" for value in values[measure])
            extra = f"   overhead {overhead[name]:+.0f} us" if name in overhead else ""
            print(f"  {name:21s} {medians[name]:7.0f} us/request{extra}   ({shown})")
        print(f"  otel-render overhead / contrib overhead: {ratio('otel-render'):.2f}x (goal: at most 0.70x)")
        print(f"  web only: {ratio(WEB_ONLY):.2f}x (the same instrumentation as the contrib side)")
        figures.update(
            {
                f"{measure}_us_per_request[bare]": medians["bare"],
                f"{measure}_overhead_us[contrib]": overhead["contrib"],
                f"{measure}_overhead_us[otel-render]": overhead["otel-render"],
                f"{measure}_overhead_us[{WEB_ONLY}]": overhead[WEB_ONLY],
                f"{measure}_overhead_ratio": ratio("otel-render"),
                f"{measure}_overhead_ratio_web_only": ratio(WEB_ONLY),
            }
        )
    return figures


if __name__ == "__main__":
    main()
