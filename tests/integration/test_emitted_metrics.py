"""What the package really emits, checked against docs/metrics.md, in both
directions.

The example app (examples/app.py: Flask, SQLAlchemy on PostgreSQL, an
APScheduler job) runs the way Render runs it, under ``opentelemetry-instrument
gunicorn -w 2 --preload``, exporting traces, metrics and logs to the loopback
OTLP receiver. It serves a mix of traffic (lookups, a create, a 404, a
failure, a request stuck past a short ``OTEL_RENDER_REQUEST_TIMEOUT_S``, the
local endpoints with, without and with a wrong token) while its job runs every
second, with a memory limit far below what it uses, so that the recovery
manager relieves memory (the worker recycle and the scheduler pause are
switched off: the test needs the action, not a restart); then it gets SIGTERM,
which flushes the last metrics.

Every metric received must be documented with the documented instrument kind,
unit and attributes, and every documented metric must be received, except the
few in ``ONLY_ON_EVENT``, which need a failure no request can cause.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from bundle import contract, emitted
from support.otlp_receiver import OTLPReceiver
from support.processes import AppProcess, free_port, gunicorn_command, http_request

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "example-token-0123456789"
JOB_INTERVAL_S = 1.0

# Documented metrics this run cannot make appear, and why: each needs a failure
# of something outside the app that no request can cause.
ONLY_ON_EVENT = {
    "otel_render.db.deadline.exceeded": "needs a database or network that hangs past the client-side deadline",
    "otel_render.scheduler.restarts": "needs a scheduler whose thread died",
}


@pytest.fixture(scope="module")
def emitted_by_the_example_app(_postgres_session_cluster) -> dict[str, emitted.EmittedMetric]:
    postgres = _postgres_session_cluster
    if not postgres.is_running():
        postgres.start()
    postgres.psql("DROP TABLE IF EXISTS items", dbname="app")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with OTLPReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_SERVICE_NAME": "otel-render-example",
            "DATABASE_URL": postgres.url(driver=None),
            "EXAMPLE_JOB_INTERVAL_S": str(JOB_INTERVAL_S),
            "OTEL_RENDER_TOKEN": TOKEN,
            "OTEL_RENDER_REQUEST_TIMEOUT_S": "1",
            # Memory critical from the start: the worker holding the most memory relieves it.
            "OTEL_RENDER_MEMORY_LIMIT_MB": "1",
            "OTEL_RENDER_RECOVERY_INTERVAL_S": "0.5",
            "OTEL_RENDER_RECOVERY_DISABLED_ACTIONS": "recycle_worker,pause_schedulers",
        }
        command = gunicorn_command("examples.app:app", port=port, workers=2, preload=True, timeout=30)
        with AppProcess(command, env=env, cwd=ROOT) as app:
            app.wait_http(base_url + "/items/1", timeout=60, expect_status=200)
            statuses: list[int] = []
            for number in range(1, 21):
                statuses.append(http_request(f"{base_url}/items/{number}", timeout=10).status)
            statuses.append(http_request(base_url + "/", timeout=10).status)
            statuses.append(
                http_request(
                    base_url + "/items",
                    method="POST",
                    headers={"Content-Type": "application/json"},
                    body='{"name": "from the metrics test"}',
                    timeout=10,
                ).status
            )
            statuses.append(http_request(base_url + "/items/9999", timeout=10).status)
            statuses.append(http_request(base_url + "/fail", timeout=10).status)
            # Stuck past OTEL_RENDER_REQUEST_TIMEOUT_S: reported while it runs.
            statuses.append(http_request(base_url + "/slow?ms=1500", timeout=10).status)
            assert statuses == [200] * 21 + [201, 404, 500, 200], app.output()
            # The local endpoints: /health is public; /api/* with the token, without it, and with a wrong one.
            assert http_request(base_url + "/health", timeout=10).status == 200
            for path in ("/api/health", "/api/metrics", "/api/diagnostics"):
                answer = http_request(base_url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
                assert answer.status in (200, 503), (path, answer.status)  # 503: memory is critical
            assert http_request(base_url + "/api/diagnostics", timeout=10).status == 401
            wrong = {"Authorization": "Bearer not-the-token"}
            assert http_request(base_url + "/api/metrics", headers=wrong, timeout=10).status == 401

            # Let the job run a few times, the recovery manager act, and the periodic reader export.
            def recovery_acted(received: OTLPReceiver) -> bool:
                return bool(received.metrics("otel_render.recovery.memory.freed"))

            assert receiver.wait_for(recovery_acted, timeout=30), app.output()
            time.sleep(2 * JOB_INTERVAL_S)
            assert app.stop(timeout=60) == 0, app.output()
        received = receiver.metrics()
    return emitted.summarize(received)


def test_every_emitted_metric_is_documented_with_its_type_and_unit(emitted_by_the_example_app):
    problems = emitted.emitted_problems(emitted_by_the_example_app, contract.package_contract())
    assert problems == [], "\n".join(problems)


def test_every_documented_metric_is_emitted(emitted_by_the_example_app):
    missing = emitted.missing_from_emission(emitted_by_the_example_app, contract.package_contract(), ONLY_ON_EVENT)
    assert missing == [], f"documented in docs/metrics.md but never emitted: {missing}"


def test_the_excused_metrics_are_documented():
    documented = contract.package_contract().by_name()
    assert set(ONLY_ON_EVENT) <= set(documented)


def test_the_excused_metrics_are_not_emitted(emitted_by_the_example_app):
    """An excused metric that shows up after all is no longer excused."""
    assert set(ONLY_ON_EVENT).isdisjoint(emitted_by_the_example_app)
