"""Web requests end to end: real gunicorn (sync and gthread workers, with and
without ``--preload``) and the stdlib server, real sockets, and what the
loopback OTLP receiver decodes."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, http_request

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
UUID_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


def web_env(receiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": "web-tests",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        **extra,
    }


def server_spans(receiver) -> list:
    return [span for span in receiver.spans() if span.kind == "SERVER"]


def spans_of_trace(receiver, trace_id: str) -> list:
    return [span for span in receiver.spans() if span.trace_id == trace_id]


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_flask_under_gunicorn(otlp_receiver, preload):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = gunicorn_command("flask_app:app", port=port, workers=2, preload=preload)
    with AppProcess(command, env=web_env(otlp_receiver), cwd=APPS) as server:
        server.wait_http(base + "/health")
        adopted = http_request(base + "/items/3", headers={"X-Request-ID": UUID_ID})
        joined = http_request(base + "/items/4", headers={"traceparent": TRACEPARENT, "X-Request-ID": UUID_ID})
        secret = http_request(base + "/items/5?api_key=s3cret&page=2")
        failed = http_request(base + "/fail", headers={"X-Request-ID": "order-77"})
        own_health = http_request(base + "/health")
        adopted_trace = UUID_ID.replace("-", "")

        assert adopted.status == 200 and adopted.header("X-Request-ID") == UUID_ID
        assert adopted.header("traceresponse").startswith(f"00-{adopted_trace}-")
        assert joined.header("traceresponse").startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert failed.status == 500 and failed.header("X-Request-ID") == "order-77"
        assert failed.header("traceresponse")
        assert HEX32.fullmatch(secret.header("X-Request-ID"))
        assert own_health.json() == {"mine": True}  # the app's own /health wins

        def all_exported(receiver) -> bool:
            routes = {
                point.attributes.get("http.route") for point in receiver.metric_points("http.server.request.duration")
            }
            return len(server_spans(receiver)) >= 6 and {"/items/<int:item_id>", "/fail"} <= routes

        assert otlp_receiver.wait_for(all_exported, timeout=20), server.output()
        output = server.output()

    spans = server_spans(otlp_receiver)
    # One server span per request (wait_http's /health goes to the app: its own route).
    assert len({span.span_id for span in spans}) == len(spans)
    assert len({span.trace_id for span in spans}) == len(spans)
    (adopted_span,) = spans_of_trace(otlp_receiver, adopted_trace)
    assert adopted_span.name == "GET /items/<int:item_id>" and adopted_span.parent_span_id == ""
    assert adopted_span.attributes["correlation.id"] == UUID_ID
    (joined_span,) = spans_of_trace(otlp_receiver, "4bf92f3577b34da6a3ce929d0e0e4736")
    assert joined_span.parent_span_id == "00f067aa0ba902b7"
    (secret_span,) = [span for span in spans if span.attributes.get("url.path") == "/items/5"]
    assert secret_span.attributes["url.query"] == "api_key=[redacted]&page=2"
    (failed_span,) = [span for span in spans if span.attributes.get("correlation.id") == "order-77"]
    assert failed_span.status_code == 2 and failed_span.attributes["http.route"] == "/fail"
    assert any(
        name == "exception" and "hunter2" not in attrs["exception.message"] for name, attrs in failed_span.events
    )
    routes = {
        point.attributes.get("http.route") for point in otlp_receiver.metric_points("http.server.request.duration")
    }
    assert not any(route and route.startswith("/items/") and route != "/items/<int:item_id>" for route in routes)
    # The app's own log line carries the ids (text format: appended).
    assert f"item 3 looked up trace_id={adopted_trace}" in output
    assert f"correlation_id={UUID_ID}" in output


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_django_under_gunicorn(otlp_receiver, preload):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = gunicorn_command("django_app:application", port=port, workers=2, preload=preload)
    with AppProcess(command, env=web_env(otlp_receiver), cwd=APPS) as server:
        server.wait_http(base + "/items/1")
        ok = http_request(base + "/items/2", headers={"X-Request-ID": UUID_ID})
        failed = http_request(base + "/fail")
        assert ok.status == 200 and ok.header("X-Request-ID") == UUID_ID
        assert failed.status == 500 and HEX32.fullmatch(failed.header("X-Request-ID"))
        assert http_request(base + "/health").json() == {"mine": True}

        def exported(receiver) -> bool:
            return any(span.attributes.get("http.route") == "/fail" for span in server_spans(receiver))

        assert otlp_receiver.wait_for(exported, timeout=20), server.output()
    (span,) = spans_of_trace(otlp_receiver, UUID_ID.replace("-", ""))
    assert span.name == "GET /items/<int:item_id>" and span.kind == "SERVER"
    (failed_span,) = [span for span in server_spans(otlp_receiver) if span.attributes.get("http.route") == "/fail"]
    assert failed_span.attributes["error.type"] == "RuntimeError"
    assert failed_span.trace_id == failed.header("X-Request-ID")


def test_a_plain_wsgi_app_under_gthread_workers_with_json_logs_a_stuck_request_and_otlp_logs(otlp_receiver):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = gunicorn_command(
        "plain_wsgi_app:app",
        port=port,
        workers=1,
        worker_class="gthread",
        extra=["--threads", "4", "--access-logfile", "-"],
    )
    env = web_env(
        otlp_receiver,
        OTEL_RENDER_LOG_FORMAT="json",
        OTEL_RENDER_REQUEST_TIMEOUT_S="0.5",
        OTEL_LOGS_EXPORTER="otlp",
    )
    with AppProcess(command, env=env, cwd=APPS) as server:
        server.wait_http(base + "/")
        stuck = threading.Thread(
            target=http_request,
            args=(base + "/slow?ms=2500",),
            kwargs={"headers": {"X-Request-ID": "stuck-1"}, "timeout": 20},
        )
        stuck.start()
        served = http_request(base + "/?token=abc", headers={"X-Request-ID": UUID_ID})
        assert served.status == 200 and served.header("X-Request-ID") == UUID_ID
        streamed = http_request(base + "/stream")
        assert streamed.body == b"ab" and streamed.header("traceresponse")
        failed = http_request(base + "/fail")
        assert failed.status == 500  # gunicorn's own error page
        stuck.join(20)
        stalls = http_request(base + "/stalls").json()
        assert [stall["correlationId"] for stall in stalls] == ["stuck-1"], server.output()
        assert "wait_for_report" in stalls[0]["stack"] and stalls[0]["limit_s"] == 0.5

        def exported(receiver) -> bool:
            stuck_spans = [s for s in server_spans(receiver) if s.attributes.get("correlation.id") == "stuck-1"]
            return stuck_spans and any("plain app served" in str(log.body) for log in receiver.logs())

        assert otlp_receiver.wait_for(exported, timeout=20), server.output()
        stdout = server.stdout()
    (stuck_span,) = [s for s in server_spans(otlp_receiver) if s.attributes.get("correlation.id") == "stuck-1"]
    assert stuck_span.attributes["otel_render.request.timed_out"] is True
    (event,) = [attrs for name, attrs in stuck_span.events if name == "otel_render.request.timeout"]
    assert "wait_for_report" in event["code.stacktrace"]
    assert otlp_receiver.latest_sum("otel_render.http.request.timeouts") == 1
    (failed_span,) = [s for s in server_spans(otlp_receiver) if s.attributes.get("url.path") == "/fail"]
    assert failed_span.attributes["error.type"] == "RuntimeError"

    # Every stdout line is one JSON object: the app's, ours and gunicorn's access log.
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    adopted_trace = UUID_ID.replace("-", "")
    (app_line,) = [
        line for line in lines if line["message"] == "plain app served /" and line.get("trace_id") == adopted_trace
    ]
    assert app_line["correlation_id"] == UUID_ID and app_line["service"] == "web-tests"
    access = [line for line in lines if line["logger"] == "gunicorn.access" and line.get("trace_id") == adopted_trace]
    assert access and access[0]["http"]["status"] == "200"
    assert "token=[redacted]" in access[0]["message"] and "abc" not in access[0]["message"]
    (stall_line,) = [line for line in lines if "still running" in line["message"]]
    assert stall_line["correlation_id"] == "stuck-1" and "wait_for_report" in stall_line["stall"]["stack"]
    assert any(line["logger"] == "otel_render.web" and "error_context" in line for line in lines)
    # OTLP log export beside the console: the app's record with its trace.
    (exported_log,) = [
        log for log in otlp_receiver.logs() if log.body == "plain app served /" and log.trace_id == adopted_trace
    ]
    assert exported_log.attributes["correlation.id"] == UUID_ID


def test_a_header_at_gunicorns_field_size_limit_passes_through_safely(otlp_receiver):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = gunicorn_command("plain_wsgi_app:app", port=port, workers=1)
    with AppProcess(command, env=web_env(otlp_receiver), cwd=APPS) as server:
        server.wait_http(base + "/")
        name = "X-Request-ID"
        # gunicorn counts "name: value" plus CRLF against --limit-request-field_size (8190).
        at_limit = "a" * (8190 - len(name) - len(": ") - 2)
        response = http_request(base + "/", headers=[(name, at_limit)])
        assert response.status == 200, server.output()
        assert HEX32.fullmatch(response.header("X-Request-ID"))  # too long to be an id: a fresh one
        # One byte more and gunicorn refuses the request itself (431 since gunicorn 22, 400 before).
        assert http_request(base + "/", headers=[(name, at_limit + "a")]).status in (400, 431)
        control = http_request(base + "/", headers=[(name, "a\x7fb")])
        assert control.status == 400 or HEX32.fullmatch(control.header("X-Request-ID"))


def test_wrap_wsgi_under_the_stdlib_server(otlp_receiver):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with AppProcess(
        [sys.executable, "stdlib_server_app.py", str(port)], env=web_env(otlp_receiver), cwd=APPS
    ) as server:
        server.wait_http(base + "/")
        response = http_request(base + "/", headers={"X-Request-ID": UUID_ID})
        assert response.header("X-Request-ID") == UUID_ID

        def exported(receiver) -> bool:
            return bool(spans_of_trace(receiver, UUID_ID.replace("-", "")))

        assert otlp_receiver.wait_for(exported, timeout=20), server.output()
    (span,) = spans_of_trace(otlp_receiver, UUID_ID.replace("-", ""))
    assert span.kind == "SERVER" and span.scope == "otel_render.web"


def test_an_asgi_app_under_gunicorns_asgi_worker_is_left_alone(otlp_receiver):
    port = free_port()
    command = gunicorn_command("asgi_app:app", port=port, workers=1, worker_class="asgi")
    with AppProcess(command, env=web_env(otlp_receiver), cwd=APPS) as server:
        response = server.wait_http(f"http://127.0.0.1:{port}/")
        assert response.status == 200 and response.body == b"asgi"
        assert response.header("X-Request-ID") is None
        assert "not instrumented" in server.output()
