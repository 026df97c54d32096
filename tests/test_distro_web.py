"""What the configurator wires for the web layer: the correlation id
generator, whole-id ratio sampling, one cardinality limit on every reader,
scrubbing exporters, and the contrib instrumentations our distro skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from otel_render import distro
from otel_render.config import Settings


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "RENDER"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, env=full_env
    )


def test_the_pipeline_has_our_id_generator_sampler_limits_and_scrubbing_exporters():
    result = run_python(
        """
        import json, otel_render
        from opentelemetry import trace
        from otel_render.distro import current_pipeline
        otel_render.configure(instrument=False)
        pipeline = current_pipeline()
        provider = pipeline.tracer_provider
        readers = list(pipeline.meter_provider._metric_readers)
        local = pipeline.local_reader
        processors = provider._active_span_processor._span_processors
        print(json.dumps({
            "id_generator": type(provider.id_generator).__name__,
            "sampler": provider.sampler.get_description(),
            "limits": sorted({min(r._instrument_class_cardinality_limit.values()) for r in [*readers, local]}),
            "readers": len(readers),
            "local_reads_the_otlp_reader": local.source is readers[0],
            "exporters": [type(p.span_exporter).__name__ for p in processors],
        }))
        """,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RENDER_METRIC_CARDINALITY_LIMIT": "123",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        },
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["id_generator"] == "CorrelationIdGenerator"
    assert "WholeTraceIdRatioSampler{0.25}" in out["sampler"]
    # One registered reader (the OTLP one), which the local reader reads; both have the limit.
    assert out["readers"] == 1 and out["local_reads_the_otlp_reader"] and out["limits"] == [123]
    assert out["exporters"] == ["ScrubbingSpanExporter"]


def test_extra_scrub_keys_reach_the_one_scrubber():
    result = run_python(
        """
        import otel_render
        from otel_render.scrub import default
        otel_render.configure(instrument=False)
        print(default.query_string("ssn=123&q=1"))
        """,
        {"OTEL_RENDER_SCRUB_KEYS": "ssn"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ssn=[redacted]&q=1"


def test_contrib_web_and_logging_instrumentations_are_superseded():
    assert {"flask", "django", "logging"} <= distro.SUPERSEDED_CONTRIB_INSTRUMENTORS


def test_cardinality_limits_cover_every_instrument_kind():
    settings, _ = Settings.from_environ({"OTEL_RENDER_METRIC_CARDINALITY_LIMIT": "50"})
    limits = distro.cardinality_limits(settings)
    assert len(limits) == 7 and set(limits.values()) == {50}


def test_wrap_wsgi_configures_once_and_leaves_the_app_alone_when_disabled():
    code = """
        import otel_render
        def app(environ, start_response):
            return []
        wrapped = otel_render.wrap_wsgi(app)
        print(wrapped is app, otel_render.wrap_wsgi(wrapped) is wrapped)
        """
    enabled = run_python(code, {})
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.split() == ["False", "True"]
    disabled = run_python(code, {"OTEL_SDK_DISABLED": "true"})
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.split() == ["True", "True"]
