"""Broken configuration under real gunicorn: one clear line per problem, and an
app that keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.processes import AppProcess, free_port, gunicorn_command, http_request

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps"

BAD = {
    "OTEL_RENDER_MEMORY_LIMIT_MB": "half a gig",
    "OTEL_RENDER_BACKEND": "splunk",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc%0D%0AX-Injected:%201",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon",
}

EXPECTED_LINES = [
    "OTEL_RENDER_MEMORY_LIMIT_MB='half a gig' is not valid: expected a whole number from 0 to 1048576 MiB",
    "OTEL_RENDER_BACKEND='splunk' is not valid: expected one of auto, otlp, grafana, honeycomb, none",
    "OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318' is not valid: expected an http:// or https:// URL",
    "OTEL_EXPORTER_OTLP_HEADERS: the value of 'authorization' contains a control character",
    "OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon' is not valid",
]


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_bad_configuration_is_reported_once_and_the_app_serves(preload):
    port = free_port()
    with AppProcess(gunicorn_command("pipeline_app:app", port=port, preload=preload), env=BAD, cwd=APPS) as server:
        server.wait_http(f"http://127.0.0.1:{port}/")
        statuses = [http_request(f"http://127.0.0.1:{port}/").status for _ in range(5)]
        server.stop()
    output = server.output()
    assert statuses == [200] * 5
    for line in EXPECTED_LINES:
        assert output.count(line) == 1, (line, output)
    assert "Bearer abc" not in output and "X-Injected" not in output
