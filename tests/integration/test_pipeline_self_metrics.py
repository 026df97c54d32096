"""The SDK's own otel.sdk.* metrics: on for the pipeline otel-render builds,
off for spans, every one emitted documented in docs/metrics.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

PROGRAM = """
import os
import otel_render
from opentelemetry import trace
from otel_render.distro import current_pipeline

otel_render.configure(instrument=False)
tracer = trace.get_tracer("app")
for _ in range(5):
    with tracer.start_as_current_span("work"):
        pass
pipeline = current_pipeline()
pipeline.tracer_provider.force_flush()
pipeline.meter_provider.force_flush()
names = sorted({m.name for m in pipeline.local_reader.refresh().metrics()})
print("FLAG", os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"))
print("NAMES", " ".join(names))
"""


def test_pipeline_self_metrics_are_emitted_documented_and_never_per_span(otlp_receiver):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "RENDER"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint, "OTEL_LOGS_EXPORTER": "otlp"})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["FLAG"] == "None"  # not left in the environment
    names = set(lines["NAMES"].split())
    sdk_names = {name for name in names if name.startswith("otel.sdk.")}
    assert {
        "otel.sdk.processor.span.processed",
        "otel.sdk.exporter.span.exported",
        "otel.sdk.exporter.metric_data_point.exported",
        "otel.sdk.metric_reader.collection.duration",
    } <= sdk_names
    assert not {"otel.sdk.span.started", "otel.sdk.span.live"} & sdk_names
    documented = set(re.findall(r"^\| `(otel\.sdk\.[a-z_.]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert sdk_names <= documented, sorted(sdk_names - documented)
