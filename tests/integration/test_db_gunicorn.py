"""The database integration end to end: a plain WSGI app on SQLAlchemy and
PostgreSQL (``tests/apps/db_app.py``) under ``opentelemetry-instrument
gunicorn`` with 2 sync workers and ``--preload``, as Render runs it.

"The instance keeps answering" is shown with ``/health``, which otel-render's
middleware answers ahead of the app from the cached health evaluation: it
touches no database, and says ``degraded`` while the database is unreachable.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, http_request

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"
POOL_METERS = (
    "db.client.connection.count",
    "db.client.connection.max",
    "db.client.connection.pending_requests",
    "db.client.connection.timeouts",
    "db.client.connection.wait_time",
    "db.client.connection.use_time",
    "db.client.connection.create_time",
)


@dataclass(frozen=True)
class Hit:
    sent: float
    done: float
    status: int
    body: dict

    @property
    def seconds(self) -> float:
        return self.done - self.sent


def hit(base_url: str, path: str = "/query", timeout: float = 60.0) -> Hit:
    sent = time.monotonic()
    result = http_request(base_url + path, timeout=timeout)
    return Hit(sent, time.monotonic(), result.status, result.json())


def app_env(database_url: str, receiver=None, **settings: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "OTEL_SERVICE_NAME": "db-app",
        "OTEL_RENDER_HEALTH_INTERVAL_S": "0.5",
        **settings,
    }
    if receiver is not None:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="300",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
    return env


def start(database_url: str, receiver=None, timeout: int = 30, **settings: str) -> tuple[AppProcess, str]:
    port = free_port()
    command = gunicorn_command("db_app:app", port=port, workers=2, preload=True, timeout=timeout)
    server = AppProcess(command, env=app_env(database_url, receiver, **settings), cwd=APPS).start()
    base_url = f"http://127.0.0.1:{port}"
    server.wait_http(base_url + "/health", timeout=30, expect_status=200)
    return server, base_url


def concurrently(base_url: str, count: int, path: str = "/query?ms=150") -> list[Hit]:
    """``count`` requests two at a time: a sync worker serves one at a time, so both workers serve."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda _: hit(base_url, path), range(count)))


def test_spans_and_every_pool_meter_reach_the_backend_and_workers_never_share_a_connection(otlp_receiver, postgres):
    server, base_url = start(postgres.url(), otlp_receiver)
    with server:
        results = concurrently(base_url, 16)
        assert {result.status for result in results} == {200}, server.output()
        backends_by_worker: dict[int, set[int]] = {}
        for result in results:
            backends_by_worker.setdefault(result.body["pid"], set()).add(result.body["backend"])
        assert len(backends_by_worker) == 2
        first, second = backends_by_worker.values()
        assert not first & second  # no PostgreSQL backend (no socket) is used by both workers

        def spans_from_both(receiver) -> bool:
            instances = {span.resource.get("service.instance.id", "") for span in receiver.spans("SELECT items")}
            return {instance[-3:] for instance in instances} >= {"-w0", "-w1"}

        def every_pool_meter(receiver) -> bool:
            return all(
                any(point.attributes.get("db.client.connection.pool.name") for m in receiver.metrics(name) for point in m.points)
                for name in POOL_METERS
            )

        assert otlp_receiver.wait_for(spans_from_both, timeout=30), server.output()
        assert otlp_receiver.wait_for(every_pool_meter, timeout=30), server.output()

    texts = {span.attributes["db.query.text"] for span in otlp_receiver.spans("SELECT items")}
    assert texts == {"SELECT count(*) FROM items", "SELECT name FROM items ORDER BY id"}  # the master's, the workers'
    span = otlp_receiver.spans("SELECT items")[-1]
    assert span.kind == "CLIENT"
    assert span.attributes["db.system.name"] == "postgresql"
    assert span.attributes["server.port"] == postgres.port
    pool_names = {
        point.attributes["db.client.connection.pool.name"]
        for metric in otlp_receiver.metrics("db.client.connection.count")
        for point in metric.points
    }
    assert pool_names == {f"postgresql://127.0.0.1:{postgres.port}/app"}
    exported = json.dumps(
        [span.attributes for span in otlp_receiver.spans()]
        + [point.attributes for metric in otlp_receiver.metrics() for point in metric.points],
        default=str,
    )
    assert postgres.password not in exported
    assert "WORKER TIMEOUT" not in server.output()


def test_after_an_idle_restart_with_a_warm_pool_no_request_fails(postgres):
    server, base_url = start(postgres.url())
    with server:
        assert {result.status for result in concurrently(base_url, 8)} == {200}
        postgres.restart()
        after = [hit(base_url) for _ in range(12)] + concurrently(base_url, 12)
        assert [result.status for result in after] == [200] * 24, [r.body for r in after if r.status != 200]


def test_a_stopped_server_is_reported_down_at_once_and_service_resumes_within_about_a_second(postgres):
    half_open_s = 1.0
    server, base_url = start(postgres.url(), OTEL_RENDER_DB_HALF_OPEN_S=str(half_open_s))
    hits: list[Hit] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            hits.append(hit(base_url, timeout=30))
            time.sleep(0.02)

    with server:
        threads = [threading.Thread(target=load) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            stopped_at = time.monotonic()
            postgres.stop()
            time.sleep(1.0)
            health = [hit(base_url, "/health") for _ in range(4)]  # between the failing queries
            time.sleep(2.0)
            health += [hit(base_url, "/health") for _ in range(4)]
            during = [h for h in hits if h.sent > stopped_at + 0.5]
            status = hit(base_url, "/db-status").body["databases"][0]
            postgres.start()
            up_at = time.monotonic()
            deadline = up_at + 30
            while time.monotonic() < deadline:
                recovered = {h.body["pid"] for h in hits if h.sent > up_at and h.status == 200}
                if len(recovered) == 2:
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)

    assert during and all(h.status == 503 for h in during), server.output()
    assert all(h.seconds < 1.0 for h in during), [h.seconds for h in during]  # failed fast, not hung
    first_failure = min(h.done for h in hits if h.status == 503)
    assert first_failure - stopped_at < 2.0  # reported down at once
    assert status["status"] == "down" and status["circuit"] == "open"
    # The instance kept answering its health check, degraded rather than dead.
    assert all(h.status == 200 and h.seconds < 1.0 for h in health), [(h.status, h.seconds) for h in health]
    assert health[-1].body == {"status": "degraded"}, [h.body for h in health]
    first_success_per_worker = {}
    for h in sorted(hits, key=lambda h: h.done):
        if h.sent > up_at and h.status == 200:
            first_success_per_worker.setdefault(h.body["pid"], h.done - up_at)
    assert len(first_success_per_worker) == 2, server.output()
    # Within about a second of the server accepting connections: the half-open
    # interval plus the probe tick, bounded generously for a loaded machine.
    assert max(first_success_per_worker.values()) < 4 * half_open_s, first_success_per_worker


def test_behind_a_blackholed_network_requests_fail_by_the_deadline_then_at_once_and_the_instance_keeps_answering(
    postgres, tcp_proxy_factory
):
    deadline_s = 5.0
    proxy = tcp_proxy_factory("127.0.0.1", postgres.port)
    url = postgres.url().replace(f":{postgres.port}/", f":{proxy.port}/")
    server, base_url = start(url, timeout=30, OTEL_RENDER_DB_TIMEOUT_S=str(deadline_s))
    with server:
        assert {result.status for result in concurrently(base_url, 8)} == {200}
        workers = set(server.children())
        proxy.blackhole()
        with ThreadPoolExecutor(max_workers=3) as pool:
            hung = [pool.submit(hit, base_url) for _ in range(2)]
            time.sleep(0.5)
            health = pool.submit(hit, base_url, "/health")  # waits for a worker the hung queries hold
            first = [future.result() for future in hung]
            answered = health.result()
        assert [h.status for h in first] == [503, 503], server.output()
        assert all(h.seconds < 3 * deadline_s for h in first), [h.seconds for h in first]
        assert answered.status == 200 and answered.seconds < 3 * deadline_s

        later = []
        for _ in range(8):
            later.append(hit(base_url))
            time.sleep(0.2)
        assert all(h.status == 503 and h.body["error"] == "DatabaseUnavailableError" for h in later), [h.body for h in later]
        assert all(h.seconds < 1.0 for h in later), [h.seconds for h in later]
        # /health answers at once, and says why: the database is unreachable.
        degraded = hit(base_url, "/health")
        assert degraded.status == 200 and degraded.seconds < 1.0
        assert degraded.body == {"status": "degraded"}, degraded.body
        assert hit(base_url, "/api/health").body["checks"]["database"] == {"status": "degraded"}

        proxy.forward()
        forwarded_at = time.monotonic()
        recovered: set[int] = set()
        while len(recovered) < 2 and time.monotonic() < forwarded_at + 30:
            recovered |= {h.body["pid"] for h in concurrently(base_url, 2) if h.status == 200}
            time.sleep(0.1)
        assert len(recovered) == 2, server.output()
        assert time.monotonic() - forwarded_at < 3 * deadline_s
        assert set(server.children()) == workers  # no worker was killed or replaced
    assert "WORKER TIMEOUT" not in server.output()
