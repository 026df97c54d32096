"""The local endpoints under a real gunicorn with 2 workers, in front of a
plain WSGI app (``tests/apps/endpoints_app.py``) that otel-render's gunicorn
hook puts behind its WSGI middleware: the instance's request totals equal what
was sent and what the OTLP receiver decoded, survive recycled workers, match
the JSON Schemas; the endpoints' own requests are counted apart from the
app's; secrets never come out; a stopped PostgreSQL degrades the instance
without failing /health; critical memory fails it.
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
from support.processes import AppProcess, free_port, gunicorn_command, http_request, wait_until

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
TOKEN = "itest-9f86d081884c7d659a2feaa0c55ad015"
AUTH = [("Authorization", f"Bearer {TOKEN}")]
ENDPOINTS = ("/health", "/api/health", "/api/metrics", "/api/diagnostics")
HTTP_DURATION = "http.server.request.duration"


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


def database_env(postgres, receiver=None, **extra: str) -> dict[str, str]:
    """The app on the test PostgreSQL (its URL carries the password), probed
    twice a second while it is up, so that an idle app notices an outage at once."""
    return app_env(receiver, DATABASE_URL=postgres.url(), OTEL_RENDER_DB_PROBE_INTERVAL_S="0.5", **extra)


def get_json(base: str, path: str, headers=AUTH) -> tuple[int, dict]:
    result = http_request(base + path, headers=headers, timeout=10)
    return result.status, json.loads(result.body)


def metrics_body(base: str) -> dict:
    return get_json(base, "/api/metrics")[1]


def instance_total(base: str) -> int:
    """Requests the instance served, from ``http.server.request.duration``."""
    return metrics_body(base)["requests"]["total"]


def route_counts(body: dict) -> dict[tuple[str, str], int]:
    return {(entry["method"], entry["route"]): entry["count"] for entry in body["requests"]["routes"]}


def metric_total(body: dict, name: str) -> float:
    for metric in body["metrics"]:
        if metric["name"] == name:
            return sum(point["value"] for point in metric["points"])
    return 0


def endpoint_count(body: dict, route: str, status: int = 200) -> int:
    return body["endpoints"]["requests"].get(route, {}).get(str(status), 0)


def server_spans(receiver) -> list:
    return [span for span in receiver.spans() if span.kind == "SERVER"]



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
        send(base, 2, "/fail")  # an exception escapes the app: gunicorn answers 500
        sent = {("GET", "/"): 30, ("GET", "/slow"): 10, ("GET", "/fail"): 2}
        total = sum(sent.values())
        traffic_done = time.time()

        # After traffic stops, every process publishes within the health interval.
        def settled():
            body = metrics_body(base)
            published = all(process["collectedAt"] >= traffic_done for process in body["processes"])
            return body if published and body["instance"]["processes"] == 3 else None

        body = wait_until(settled, timeout=20)
        assert body, f"/api/metrics never showed 3 processes after the traffic: {metrics_body(base)}\n{server.output()}"
        assert body["requests"]["total"] == total, body["requests"]
        # By route template, as the app named them; the failures are its errors.
        assert route_counts(body) == sent
        assert body["requests"]["errors"] == 2
        assert [entry["errors"] for entry in body["requests"]["routes"] if entry["route"] == "/fail"] == [2]
        workers = [process for process in body["processes"] if process["role"] == "worker"]
        assert len(workers) == 2 and all(process["rss"] > 0 for process in body["processes"])
        # Counted once at import: with --preload in the master only, however many workers inherit it.
        assert metric_total(body, "app.boots") == (1 if preload else 2)

        # The local endpoints' own requests are not app requests: the middleware
        # answers them ahead of the app, without a span or a duration, and
        # counts them in otel_render.endpoint.requests.
        health_before = endpoint_count(body, "/health")
        assert health_before >= 1  # wait_http's
        for _ in range(5):
            assert http_request(base + "/health", timeout=10).status == 200
        health_done = time.time()

        def five_more_health_requests():
            body = metrics_body(base)
            published = all(process["collectedAt"] >= health_done for process in body["processes"])
            return body if published else None

        body = wait_until(five_more_health_requests, 20)
        assert body, metrics_body(base)["processes"]
        assert endpoint_count(body, "/health") == health_before + 5, body["endpoints"]
        assert body["requests"]["total"] == total and route_counts(body) == sent

        # The OTLP receiver decoded the same numbers.
        def exported(receiver) -> bool:
            return (
                receiver.latest_count(HTTP_DURATION) == total
                and all(
                    receiver.latest_count(HTTP_DURATION, {"http.route": route}) == count
                    for (_, route), count in sent.items()
                )
                and receiver.latest_sum("otel_render.endpoint.requests", {"http.route": "/health"}) == health_before + 5
            )

        assert otlp_receiver.wait_for(exported, timeout=20), (
            otlp_receiver.latest_count(HTTP_DURATION),
            otlp_receiver.latest_sum("otel_render.endpoint.requests", {"http.route": "/health"}),
            server.output(),
        )
        assert otlp_receiver.latest_sum("app.boots") == (1 if preload else 2)
        # One server span per app request, none for the local endpoints.
        assert otlp_receiver.wait_for(lambda r: len(server_spans(r)) >= total, timeout=20), server.output()
        names = [span.name for span in server_spans(otlp_receiver)]
        assert sorted(set(names)) == ["GET /", "GET /fail", "GET /slow"] and len(names) == total

        # The telemetry pipeline reports itself (SDK self-metrics), per batch, not per span.
        telemetry = wait_until(lambda: (t := metrics_body(base)["telemetry"])["spans"]["exported"] > 0 and t, 20)
        assert telemetry and telemetry["spans"]["processed"] >= telemetry["spans"]["exported"] > 0
        names = {metric["name"] for metric in metrics_body(base)["metrics"]}
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
            body = metrics_body(base)
            return body["requests"]["total"] == 10 and body["instance"]["processes"] == 2

        assert wait_until(both_workers_counted, 20), f"{metrics_body(base)['requests']}\n{server.output()}"


def test_totals_never_drop_when_workers_are_recycled():
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
            seen.append(instance_total(base))
        assert seen == sorted(seen), f"totals went backwards: {seen}"

        total = wait_until(lambda: instance_total(base) == sent, timeout=20)
        assert total, f"{instance_total(base)} != {sent}\n{server.output()}"
        _, body = get_json(base, "/api/metrics")
        assert body["instance"]["exitedProcesses"] >= 2  # max-requests recycled workers along the way

        # A worker stopped by a signal: its requests stay counted too.
        victim = server.children()[0]
        os.kill(victim, signal.SIGTERM)
        assert wait_until(lambda: victim not in server.children() and len(server.children()) == 2, 20)
        send(base, 4)
        sent += 4
        assert wait_until(lambda: instance_total(base) == sent, timeout=20), f"{instance_total(base)} != {sent}"


SECRET_HEADER = "Bearer planted-header-token-1"
SECRET_COOKIE = "planted-cookie-2"
SECRET_QUERY = ("planted-api-key-3", "planted-query-token-4")
WRONG_TOKEN = "planted-wrong-token-5"


def test_planted_secrets_never_reach_an_endpoint_a_span_or_a_log_line(otlp_receiver, postgres):
    assert postgres.password in postgres.url()
    port = free_port()
    command = gunicorn_command("endpoints_app:app", port=port, workers=2, preload=True)
    env = database_env(postgres, otlp_receiver, OTEL_EXPORTER_OTLP_HEADERS="x-planted=planted-export-header-6")
    with AppProcess(command, env=env, cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        api_key, token = SECRET_QUERY
        for path, expected in (("/fail", 500), ("/", 200), ("/db", 200)):
            result = http_request(
                f"{base}{path}?api_key={api_key}&token={token}&page=2",
                headers=[("Authorization", SECRET_HEADER), ("Cookie", f"session={SECRET_COOKIE}")],
            )
            assert result.status == expected, (path, result.text)
        for path in ("/api/metrics", "/api/diagnostics", "/api/health"):
            assert http_request(base + path, headers=[("Authorization", f"Bearer {WRONG_TOKEN}")]).status == 401
        postgres.stop()  # the database integration reports it down, naming the database
        assert wait_until(lambda: get_json(base, "/api/health")[1]["checks"]["database"]["status"] == "degraded", 20), (
            server.output()
        )
        assert http_request(base + "/db").status == 503
        assert wait_until(lambda: get_json(base, "/api/diagnostics")[1]["errors"], 10)

        bodies = [http_request(base + path, headers=AUTH).text for path in ENDPOINTS]
        assert otlp_receiver.wait_for(lambda r: r.spans("GET /fail") and r.spans("SELECT app"), timeout=20)
        _, metrics = get_json(base, "/api/metrics")
        assert metrics["endpoints"]["authFailures"] == {"/api/metrics": 1, "/api/diagnostics": 1, "/api/health": 1}
        (error,) = json.loads(bodies[3])["errors"]
        # The error context is there, with the secrets scrubbed out of it.
        assert "failed on purpose" in error["error"]["message"]
        assert f"app:[redacted]@127.0.0.1:{postgres.port}/app" in error["error"]["message"]
        assert error["request"]["headers"]["authorization"] == "[redacted]"
        assert error["request"]["headers"]["cookie"] == "[redacted]"
        assert error["request"]["path"] == "/fail" and error["request"]["route"] == "/fail"
        output = server.output()

    exported = [repr(span) for span in otlp_receiver.spans()] + [repr(metric) for metric in otlp_receiver.metrics()]
    (fail_span,) = otlp_receiver.spans("GET /fail")
    assert fail_span.attributes["url.query"] == "api_key=[redacted]&token=[redacted]&page=2"
    assert "app:[redacted]@" in repr(fail_span.events)  # the exception event, scrubbed
    # otel-render's line for the failed request, and gunicorn's own, with the traceback.
    assert "unhandled RuntimeError in GET /fail" in output
    assert "Error handling request GET /fail?api_key=[redacted]&token=[redacted]&page=2" in output
    assert f"app:[redacted]@127.0.0.1:{postgres.port}/app" in output
    planted = [
        "planted-header-token-1",
        SECRET_COOKIE,
        *SECRET_QUERY,
        WRONG_TOKEN,
        "planted-export-header-6",
        postgres.password,
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
    port = free_port()
    command = gunicorn_command("endpoints_app:app", port=port, workers=2, preload=True)
    database = f"postgresql://127.0.0.1:{postgres.port}/app"  # the pool name: the URL without credentials
    with AppProcess(command, env=database_env(postgres), cwd=APPS) as server:
        base = f"http://127.0.0.1:{port}"
        server.wait_http(base + "/health", expect_status=200)
        up = wait_until(
            lambda: (c := get_json(base, "/api/health")[1]["checks"]["database"])["output"] == f"{database} up" and c,
            20,
        )
        assert up and up["status"] == "healthy", (get_json(base, "/api/health")[1]["checks"], server.output())
        postgres.stop()
        body = wait_until(
            lambda: (b := get_json(base, "/api/health")[1])["checks"]["database"]["status"] == "degraded" and b, 20
        )
        assert body, server.output()
        # Degraded, not unhealthy: restarting the instance cannot fix the database.
        assert body["status"] == "degraded"
        check = body["checks"]["database"]
        assert f"{database} down since " in check["output"]  # after the process that saw it: "<instance>-w1: ..."
        assert "psycopg2.OperationalError" in check["output"] and "circuit open" in check["output"]
        assert postgres.password not in json.dumps(body)
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
        assert http_request(base + "/db").status == 200


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
        _, body = answer
        assert body["checks"]["memory"]["status"] == "unhealthy"
        assert "recovery has not brought it back" in body["checks"]["memory"]["output"]
        validate("/api/health", body)
        # The app itself keeps serving.
        assert http_request(base + "/").status == 200
