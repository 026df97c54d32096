"""Run by ``health_latency.py`` in the otel-render virtualenv: time the local
endpoints called as WSGI apps in this process, next to the app's plain route.
Prints one JSON object: microseconds per call (median of rounds)."""

import json
import statistics
import sys
import time

import otel_render

otel_render.configure(instrument=False)

import health_app  # noqa: E402

from otel_render import endpoints  # noqa: E402

ROUNDS = 7


def environ(path, token=None):
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http"}
    if token:
        env["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return env


def start_response(status, headers):
    return None


def per_call_us(path, calls, token=None):
    env = environ(path, token)
    app = health_app.app
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(calls):
            for _chunk in app(dict(env), start_response):
                pass
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


installed = endpoints.installed()
installed.monitor.tick()  # the first evaluation, as the background loop would run it
token = sys.argv[1]
print(
    json.dumps(
        {
            "/plain": per_call_us("/plain", 20000),
            "/health": per_call_us("/health", 20000),
            "/api/health": per_call_us("/api/health", 2000, token),
            "/api/metrics": per_call_us("/api/metrics", 50, token),
        }
    )
)
