"""The local endpoints under a real gunicorn with 2 workers: the instance's
totals equal what was sent and what the OTLP receiver decoded, survive
recycled workers, match the JSON Schemas; secrets never come out; a stopped
PostgreSQL degrades the instance without failing /health; critical memory
fails it.

The app (``tests/apps/endpoints_app.py``) hands the endpoint paths to
otel-render itself, standing in for the WSGI middleware, and counts its own
requests in ``app.requests``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.endpoint_schemas import validate
from support.processes import AppProcess, free_port, gunicorn_command, http_request

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
TOKEN = "itest-9f86d081884c7d659a2feaa0c55ad015"
AUTH = [("Authorization", f"Bearer {TOKEN}")]
ENDPOINTS = ("/health", "/api/health", "/api/metrics", "/api/diagnostics")


def app_env(receiver=None, **extra: str) -> dict[str, str]:
    env = {
        "OTEL_SERVICE_NAME": "endpoints-test",
        "OTEL_RENDER_TOKEN": TOKEN,
        "OTEL_RENDER_HEALTH_INTERVAL_S": "0.2",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    return {**env, **extra}


def get_json(base: str, path: str, headers=AUTH) -> tuple[int, dict]:
    result = http_request(base + path, headers=headers, timeout=10)
    return result.status, json.loads(result.body)


def instance_total(base: str, name: str = "app.requests") -> tuple[float, dict]:
    _, body = get_json(base, "/api/metrics")
    for metric in body["metrics"]:
        if metric["name"] == name:
            return sum(point["value"] for point in metric["points"]), body
    return 0, body


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def send(base: str, count: int, path: str = "/") -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: http_request(base + path, timeout=10).status, range(count)))
    assert all(status in (200, 500) for status in statuses), statuses


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_instance_totals_equal_requests_sent_and_what_the_receiver_decoded(otlp_receiver, preload):
    port = free_port()
    command = gunicorn_command("endpoints_app:app", port=port, workers=2, preload=preload)
    with AppProcess(command, env=app_env(otlp_receiver), cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        send(base, 30)
        send(base, 10, "/slow?ms=50")  # concurrent slow requests: both workers serve
        sent = 40

        # After traffic stops, the workers publish within the health interval.
        def settled():
            total, body = instance_total(base)
            return body if total == sent and body["instance"]["processes"] == 3 else None

        body = wait_until(settled, timeout=20)
        assert body, (
            f"/api/metrics never showed {sent} requests from 3 processes: {instance_total(base)[0]}\n{server.output()}"
        )
        workers = [process for process in body["processes"] if process["role"] == "worker"]
        assert len(workers) == 2 and all(process["rss"] > 0 for process in body["processes"])
        # Counted once at import: with --preload in the master only, however many workers inherit it.
        assert instance_total(base, "app.boots")[0] == (1 if preload else 2)

        assert otlp_receiver.wait_for(lambda r: r.latest_sum("app.requests") == sent, timeout=20), server.output()
        assert otlp_receiver.latest_sum("app.boots") == (1 if preload else 2)

        # The telemetry pipeline reports itself (SDK self-metrics), per batch, not per span.
        telemetry = wait_until(
            lambda: (t := get_json(base, "/api/metrics")[1]["telemetry"])["spans"]["exported"] > 0 and t, 20
        )
        assert telemetry and telemetry["spans"]["processed"] >= telemetry["spans"]["exported"] > 0
        names = {metric["name"] for metric in get_json(base, "/api/metrics")[1]["metrics"]}
        assert "otel.sdk.exporter.span.exported" in names and "otel.sdk.span.started" not in names

        for path in ENDPOINTS:
            status, payload = get_json(base, path)
            assert status == 200, (path, payload)
            validate(path, payload)
        status, summary = get_json(base, "/api/health", headers=[])
        validate("/api/health", summary)
        assert set(summary) == {"status", "timestamp", "checks"}


def test_workers_that_configure_otel_render_themselves_still_form_one_instance():
    port = free_port()
    command = gunicorn_command("endpoints_configured_app:app", port=port, workers=2, instrument=False)
    with AppProcess(command, env=app_env(), cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        send(base, 10, "/slow?ms=50")

        def both_workers_counted():
            total, body = instance_total(base)
            return total == 10 and body["instance"]["processes"] == 2

        assert wait_until(both_workers_counted, 20), f"{instance_total(base)}\n{server.output()}"


def test_totals_never_drop_when_workers_are_recycled(otlp_receiver):
    port = free_port()
    command = gunicorn_command(
        "endpoints_app:app",
        port=port,
        workers=2,
        preload=True,
        extra=["--max-requests", "7", "--max-requests-jitter", "0"],
    )
    with AppProcess(command, env=app_env(), cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        seen = []
        sent = 0
        for _ in range(5):
            send(base, 6)
            sent += 6
            seen.append(instance_total(base)[0])
        assert seen == sorted(seen), f"totals went backwards: {seen}"

        total = wait_until(lambda: instance_total(base)[0] == sent, timeout=20)
        assert total, f"{instance_total(base)[0]} != {sent}\n{server.output()}"
        _, body = get_json(base, "/api/metrics")
        assert body["instance"]["exitedProcesses"] >= 2  # max-requests recycled workers along the way

        # A worker stopped by a signal: its requests stay counted too.
        victim = server.children()[0]
        os.kill(victim, signal.SIGTERM)
        assert wait_until(lambda: victim not in server.children() and len(server.children()) == 2, 20)
        send(base, 4)
        sent += 4
        assert wait_until(lambda: instance_total(base)[0] == sent, timeout=20), f"{instance_total(base)[0]} != {sent}"


SECRET_HEADER = "Bearer planted-header-token-1"
SECRET_COOKIE = "planted-cookie-2"
SECRET_QUERY = ("planted-api-key-3", "planted-query-token-4")
WRONG_TOKEN = "planted-wrong-token-5"


def test_planted_secrets_never_reach_an_endpoint_a_span_or_a_log_line(otlp_receiver, postgres):
    dsn = postgres.url(driver="psycopg2").replace("postgresql+psycopg2://", "postgresql://")
    assert "s3cret-pw" in dsn
    port = free_port()
    command = gunicorn_command("endpoints_app:app", port=port, workers=2, preload=True)
    env = app_env(
        otlp_receiver,
        APP_DATABASE_DSN=dsn,
        OTEL_EXPORTER_OTLP_HEADERS="x-planted=planted-export-header-6",
    )
    with AppProcess(command, env=env, cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        api_key, token = SECRET_QUERY
        for path in ("/fail", "/"):
            result = http_request(
                f"{base}{path}?api_key={api_key}&token={token}&page=2",
                headers=[("Authorization", SECRET_HEADER), ("Cookie", f"session={SECRET_COOKIE}")],
            )
            assert result.status in (200, 500)
        for path in ("/api/metrics", "/api/diagnostics", "/api/health"):
            assert http_request(base + path, headers=[("Authorization", f"Bearer {WRONG_TOKEN}")]).status == 401
        postgres.stop()  # the database check now fails, with the DSN in its output
        assert wait_until(
            lambda: get_json(base, "/api/health")[1]["checks"]["database"]["status"] == "unhealthy", 20
        ), server.output()
        assert wait_until(lambda: get_json(base, "/api/diagnostics")[1]["errors"], 10)

        bodies = [http_request(base + path, headers=AUTH).text for path in ENDPOINTS]
        assert otlp_receiver.wait_for(lambda r: r.spans("GET /fail"), timeout=20)
        _, metrics = get_json(base, "/api/metrics")
        assert metrics["endpoints"]["authFailures"] == {"/api/metrics": 1, "/api/diagnostics": 1, "/api/health": 1}
        diagnostics_body = json.loads(bodies[3])
        assert any("failed on purpose" in error["error"]["message"] for error in diagnostics_body["errors"])
        output = server.output()

    exported = [repr(span) for span in otlp_receiver.spans()] + [repr(metric) for metric in otlp_receiver.metrics()]
    assert "[redacted]" in " ".join(exported)  # the query string was there, scrubbed
    assert "request failed: /fail?api_key=[redacted]" in output  # and the app's log line
    planted = [
        "planted-header-token-1",
        SECRET_COOKIE,
        *SECRET_QUERY,
        WRONG_TOKEN,
        "planted-export-header-6",
        "s3cret-pw",
        TOKEN,
    ]
    for where, text in [
        ("endpoint bodies", "\n".join(bodies)),
        ("exported telemetry", "\n".join(exported)),
        ("log output", output),
    ]:
        for secret in planted:
            assert secret not in text, f"{secret!r} leaked into the {where}"


def test_health_stays_200_while_postgresql_is_stopped_and_says_why(postgres):
    dsn = postgres.url(driver="psycopg2").replace("postgresql+psycopg2://", "postgresql://")
    port = free_port()
    command = gunicorn_command("endpoints_app:app", port=port, workers=2, preload=True)
    with AppProcess(command, env=app_env(APP_DATABASE_DSN=dsn), cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        assert wait_until(lambda: get_json(base, "/api/health")[1]["checks"]["database"]["status"] == "healthy", 20)
        postgres.stop()
        body = wait_until(
            lambda: (b := get_json(base, "/api/health")[1])["checks"]["database"]["status"] == "unhealthy" and b, 20
        )
        assert body, server.output()
        assert body["status"] == "degraded"
        assert "cannot query" in body["checks"]["database"]["output"]
        assert "s3cret-pw" not in body["checks"]["database"]["output"]
        # Every worker sees it within an evaluation interval; /health never fails meanwhile.
        statuses = set()

        def every_worker_says_degraded():
            answers = [http_request(base + "/health") for _ in range(5)]
            statuses.update(answer.status for answer in answers)
            return all(answer.json() == {"status": "degraded"} for answer in answers)

        assert wait_until(every_worker_says_degraded, 20), server.output()
        assert statuses == {200}
        postgres.start()
        assert wait_until(lambda: http_request(base + "/health").json() == {"status": "healthy"}, 20), server.output()


def test_health_answers_503_when_instance_memory_stays_critical():
    port = free_port()
    command = gunicorn_command("endpoints_app:app", port=port, workers=2, preload=True)
    env = app_env(OTEL_RENDER_MEMORY_LIMIT_MB="1", OTEL_RENDER_MEMORY_CRITICAL_GRACE_S="0.5")
    with AppProcess(command, env=env, cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health")
        result = wait_until(lambda: (r := http_request(base + "/health")).status == 503 and r, 20)
        assert result and result.json() == {"status": "unhealthy"}, server.output()
        # The other worker agrees within one evaluation interval.
        answer = wait_until(lambda: (a := get_json(base, "/api/health"))[0] == 503 and a, 20)
        assert answer, server.output()
        status, body = answer
        assert body["checks"]["memory"]["status"] == "unhealthy"
        assert "recovery has not brought it back" in body["checks"]["memory"]["output"]
        validate("/api/health", body)
        # The app itself keeps serving.
        assert http_request(base + "/").status == 200
