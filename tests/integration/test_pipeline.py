"""The foundation end to end: a real gunicorn with 2 workers under plain
``opentelemetry-instrument``, Render's variables set, exporting to a loopback
OTLP receiver that decodes the protobuf. With and without ``--preload``.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, http_request

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"

RENDER_ENV = {
    "RENDER": "true",
    "RENDER_SERVICE_NAME": "shop-web",
    "RENDER_SERVICE_ID": "srv-d0abc",
    "RENDER_SERVICE_TYPE": "web",
    "RENDER_INSTANCE_ID": "srv-d0abc-7f9c-x1",
    "RENDER_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "RENDER_GIT_BRANCH": "main",
    "IS_PULL_REQUEST": "false",
    "RENDER_CPU_COUNT": "0.5",
}


def pipeline_env(receiver_endpoint: str) -> dict[str, str]:
    return {
        **RENDER_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def hit_both_workers(base_url: str, rounds: int = 3) -> set[str]:
    """Concurrent slow requests: a sync worker serves one at a time, so two
    in flight together land on two workers."""
    instances: set[str] = set()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(rounds):
            results = list(pool.map(lambda _: http_request(f"{base_url}/?ms=300", timeout=10), range(2)))
            for result in results:
                assert result.status == 200
                instances.add(result.json()["instance"])
    return instances


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_every_worker_exports_with_render_resource_and_its_own_slot_id(otlp_receiver, preload):
    port = free_port()
    command = gunicorn_command("pipeline_app:app", port=port, workers=2, preload=preload)
    with AppProcess(command, env=pipeline_env(otlp_receiver.endpoint), cwd=APPS) as server:
        base_url = f"http://127.0.0.1:{port}"
        server.wait_http(base_url + "/")
        served_by = hit_both_workers(base_url)
        expected = {"srv-d0abc-7f9c-x1-w0", "srv-d0abc-7f9c-x1-w1"}
        assert served_by == expected, server.output()

        def spans_from_both(receiver) -> bool:
            return {span.resource.get("service.instance.id") for span in receiver.spans("handle")} >= expected

        def metrics_from_both(receiver) -> bool:
            return {m.resource.get("service.instance.id") for m in receiver.metrics("app.requests")} >= expected

        assert otlp_receiver.wait_for(spans_from_both, timeout=20), server.output()
        assert otlp_receiver.wait_for(metrics_from_both, timeout=20), server.output()

    resource = otlp_receiver.spans("handle")[0].resource
    assert resource["service.name"] == "shop-web"
    assert resource["service.version"] == "0123456789ab"
    assert resource["deployment.environment.name"] == "production"
    assert resource["cloud.provider"] == "render"
    assert resource["render.service.id"] == "srv-d0abc"
    assert resource["render.instance.id"] == "srv-d0abc-7f9c-x1"
    assert resource["telemetry.distro.name"] == "otel-render"
    # Every export went over OTLP/HTTP protobuf.
    assert {request.header("content-type") for request in otlp_receiver.requests} == {"application/x-protobuf"}


def test_a_replacement_worker_takes_the_slot_of_the_one_it_replaces(otlp_receiver):
    port = free_port()
    command = gunicorn_command("pipeline_app:app", port=port, workers=2, preload=True)
    with AppProcess(command, env=pipeline_env(otlp_receiver.endpoint), cwd=APPS) as server:
        base_url = f"http://127.0.0.1:{port}"
        server.wait_http(base_url + "/")
        hit_both_workers(base_url)
        old_workers = set(server.children())
        assert len(old_workers) == 2
        victim = min(old_workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            current = set(server.children())
            if len(current) == 2 and victim not in current:
                break
            time.sleep(0.05)
        else:
            pytest.fail("gunicorn did not replace the killed worker\n" + server.output())
        served_by = hit_both_workers(base_url)
    # Still exactly the two slot ids: the recycle added no series.
    assert served_by == {"srv-d0abc-7f9c-x1-w0", "srv-d0abc-7f9c-x1-w1"}
