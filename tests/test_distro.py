"""The pipeline the configurator builds: resource, identity per process,
idempotent configure(), OTEL_SDK_DISABLED, and our instrumentor base class."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from otel_render import distro
from otel_render.config import Settings
from otel_render.instrumentor import RenderInstrumentor
from otel_render.web import gunicorn

RENDER = {"RENDER": "true", "RENDER_SERVICE_NAME": "shop", "RENDER_INSTANCE_ID": "srv-1-abc", "RENDER_GIT_COMMIT": "f" * 40}


def settings(environ):
    parsed, problems = Settings.from_environ(environ)
    assert problems == []
    return parsed


def test_resource_carries_render_attributes_and_the_distro():
    attributes = distro.build_resource(settings(RENDER), "0.66b2").attributes
    assert attributes["service.name"] == "shop"
    assert attributes["cloud.provider"] == "render"
    assert attributes["telemetry.distro.name"] == "otel-render"
    assert attributes["telemetry.auto.version"] == "0.66b2"


def test_standard_service_name_wins(monkeypatch):
    # Resource.create reads OTEL_SERVICE_NAME from the process environment (the SDK's rule).
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    environ = {**RENDER, "OTEL_SERVICE_NAME": "checkout"}
    assert distro.build_resource(settings(environ)).attributes["service.name"] == "checkout"


@pytest.fixture
def arbiter_state(monkeypatch):
    state = gunicorn._ArbiterState()
    monkeypatch.setattr(gunicorn, "_state", state)
    return state


def test_instance_id_outside_gunicorn_is_left_to_the_sdk(arbiter_state):
    assert distro.process_instance_id(settings(RENDER)) is None


def test_instance_id_names_the_master_and_the_worker_slot(arbiter_state):
    arbiter_state.master_pid = os.getpid()
    assert distro.process_instance_id(settings(RENDER)) == "srv-1-abc-master"
    arbiter_state.master_pid = os.getpid() + 1  # we are a child of that master
    arbiter_state.pending_slot = 1
    assert distro.process_instance_id(settings(RENDER)) == "srv-1-abc-w1"


def test_instance_id_off_render_includes_host_and_master_pid(arbiter_state):
    arbiter_state.master_pid = 4242
    arbiter_state.pending_slot = 0
    assert distro.process_instance_id(settings({})).endswith("-4242-w0")


def test_user_instance_id_wins_in_every_process(arbiter_state):
    arbiter_state.master_pid = os.getpid() + 1
    arbiter_state.pending_slot = 3
    environ = {**RENDER, "OTEL_RESOURCE_ATTRIBUTES": "team=a,service.instance.id=mine"}
    assert distro.process_instance_id(settings(environ)) == "mine"


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "RENDER"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, env=full_env
    )


def test_configure_is_idempotent_and_keeps_telemetry_local_by_default():
    result = run_python(
        """
        import json, logging, otel_render
        from otel_render.distro import current_pipeline
        from opentelemetry import trace, metrics
        first = otel_render.configure()
        pipeline = current_pipeline()
        second = otel_render.configure()
        assert current_pipeline() is pipeline
        trace.get_tracer("t").start_span("s").end()
        metrics.get_meter("m").create_counter("demo.count").add(2)
        snapshot = pipeline.local_reader.refresh()
        print(json.dumps({
            "first": first, "second": second,
            "backend": pipeline.plan.backend,
            "provider": type(trace.get_tracer_provider()).__module__,
            "counter": snapshot.find("demo.count").data.data_points[0].value,
        }))
        """,
        {},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"first": True, "second": True, "backend": "none", "provider": "opentelemetry.sdk.trace", "counter": 2}
    assert "Overriding" not in result.stderr  # no second provider was set


def test_sdk_disabled_turns_everything_off():
    result = run_python(
        """
        import otel_render
        from opentelemetry import trace
        from otel_render.distro import current_pipeline
        print(otel_render.configure(), current_pipeline(), type(trace.get_tracer_provider()).__name__)
        """,
        {"OTEL_SDK_DISABLED": "true"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "None", "ProxyTracerProvider"]


def test_bad_configuration_is_reported_once_and_the_program_runs():
    result = run_python(
        """
        import otel_render
        print("configured", otel_render.configure())
        print("app still runs")
        """,
        {
            "OTEL_RENDER_MEMORY_LIMIT_MB": "lots",
            "OTEL_RENDER_BACKEND": "datadog",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-a=1%0Ax-b: 2",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "configured True" in result.stdout and "app still runs" in result.stdout
    for needle in ("OTEL_RENDER_MEMORY_LIMIT_MB='lots' is not valid", "OTEL_RENDER_BACKEND='datadog' is not valid",
                   "OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318' is not valid", "the value of 'x-a' contains a control character"):
        assert result.stderr.count(needle) == 1, (needle, result.stderr)


def test_an_sdk_configured_before_us_is_kept_and_gets_the_local_reader():
    result = run_python(
        """
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider(); trace.set_tracer_provider(mine)
        metrics.set_meter_provider(MeterProvider())
        import otel_render
        from otel_render.distro import current_pipeline
        otel_render.configure()
        pipeline = current_pipeline()
        metrics.get_meter("m").create_counter("kept.count").add(1)
        print(trace.get_tracer_provider() is mine, pipeline.owns_sdk,
              pipeline.local_reader.refresh().find("kept.count").data.data_points[0].value)
        """,
        {},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "1"]
    assert "already configured" in result.stderr


# --- instrumentor base -----------------------------------------------------------


class _Probe(RenderInstrumentor):
    requirement = ("pytest>=1",)
    instrumented = 0

    def instrumentation_dependencies(self):
        return self.requirement

    def _instrument(self, **kwargs):
        type(self).instrumented += 1

    def _uninstrument(self, **kwargs):
        type(self).instrumented -= 1


@pytest.mark.parametrize(
    ("requirement", "instrumented", "level"),
    [(("pytest>=1",), 1, None), (("no-such-package-xyz>=1",), 0, logging.DEBUG), (("pytest<1",), 0, logging.WARNING)],
)
def test_instrumentor_checks_its_own_dependencies_even_when_told_to_skip(requirement, instrumented, level, caplog):
    class Probe(_Probe):
        pass

    Probe.requirement = requirement
    Probe.instrumented = 0
    with caplog.at_level(logging.DEBUG, logger="otel_render.instrumentor"):
        Probe().instrument(skip_dep_check=True)
    assert Probe.instrumented == instrumented
    records = [r for r in caplog.records if r.name == "otel_render.instrumentor"]
    if level is None:
        assert records == []
    else:
        assert [r.levelno for r in records] == [level]
    if instrumented:
        Probe().uninstrument()
        assert Probe.instrumented == 0


def test_distro_skips_superseded_contrib_instrumentors(monkeypatch):
    loaded = []

    class EntryPoint:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def load(self):
            return lambda: type("I", (), {"instrument": lambda _self, **kw: loaded.append(self.value)})()

    monkeypatch.setattr(distro, "SUPERSEDED_CONTRIB_INSTRUMENTORS", {"flask"})
    instance = distro.OtelRenderDistro()
    instance.load_instrumentor(EntryPoint("flask", "opentelemetry.instrumentation.flask:FlaskInstrumentor"))
    instance.load_instrumentor(EntryPoint("flask", "otel_render.web.flask:FlaskInstrumentor"))
    instance.load_instrumentor(EntryPoint("requests", "opentelemetry.instrumentation.requests:RequestsInstrumentor"))
    assert loaded == ["otel_render.web.flask:FlaskInstrumentor", "opentelemetry.instrumentation.requests:RequestsInstrumentor"]


# --- fork safety of what the pipeline builds -------------------------------------


def _in_child(check) -> bytes:
    """Fork; run ``check()`` in the child (bytes, within 10 s); return what it wrote."""
    import select

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, check())
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 20)
    answer = os.read(read_end, 64) if ready else b"timeout"
    os.close(read_end)
    if answer == b"timeout":
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    return answer


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_the_parent_exports_metrics_can_still_export():
    import threading

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    parent = os.getpid()
    exporting, release = threading.Event(), threading.Event()
    exported_in_child = threading.Event()

    class HeldExporter(MetricExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            if os.getpid() == parent:
                exporting.set()
                release.wait(30)  # the parent's export is in flight when we fork
            else:
                exported_in_child.set()
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):
            return True

        def shutdown(self, timeout_millis=30_000, **kwargs):
            pass

    reader = distro.ForkSafePeriodicExportingMetricReader(HeldExporter(), export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    provider.get_meter("t").create_counter("c").add(1)
    collecting = threading.Thread(target=reader.collect, daemon=True)
    collecting.start()
    try:
        assert exporting.wait(10)

        def child_exports() -> bytes:
            worker = threading.Thread(target=reader.collect, daemon=True)
            worker.start()
            return b"1" if exported_in_child.wait(5) else b"0"

        assert _in_child(child_exports) == b"1"
    finally:
        release.set()
        collecting.join(10)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_never_reuses_the_parents_exporter_connection(otlp_receiver, monkeypatch):
    from otel_render import lifecycle

    monkeypatch.setattr(lifecycle, "_registry", lifecycle._Registry())
    lifecycle.install(1.0, handle_sigterm=False)
    session = distro.fork_safe_session()
    url = otlp_receiver.signal_endpoint("traces")
    assert session.post(url, data=b"", headers={"content-type": "application/x-protobuf"}).status_code == 200
    inherited = session.get_adapter(url)
    assert len(inherited.poolmanager.pools) == 1  # a keep-alive connection is pooled

    def child_pools() -> bytes:
        adapter = session.get_adapter(url)
        return b"1" if adapter is not inherited and len(adapter.poolmanager.pools) == 0 else b"0"

    assert _in_child(child_pools) == b"1"
    assert session.get_adapter(url) is inherited  # the parent keeps its connection


@pytest.mark.parametrize(
    "temporality, storages, reads_through",
    [("", 1, True), ("delta", 2, False)],
    ids=["cumulative-export-is-read-through", "delta-export-keeps-a-local-storage"],
)
def test_the_local_reader_reads_the_otlp_readers_aggregations_when_they_are_the_same(temporality, storages, reads_through):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_METRICS_EXPORTER": "otlp"}
    if temporality:
        env["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"] = temporality
    result = run_python(
        """
        import json, otel_render
        from opentelemetry import metrics
        from otel_render.distro import current_pipeline
        otel_render.configure()
        pipeline = current_pipeline()
        counter = metrics.get_meter("m").create_counter("demo.count")
        counter.add(2)
        first = pipeline.local_reader.refresh().find("demo.count").data.data_points[0].value
        counter.add(3)
        second = pipeline.local_reader.refresh().find("demo.count").data.data_points[0].value
        print(json.dumps({
            "storages": len(pipeline.meter_provider._measurement_consumer._reader_storages),
            "source": type(pipeline.local_reader.source).__name__ if pipeline.local_reader.source else None,
            "values": [first, second],
        }))
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["storages"] == storages
    assert out["source"] == ("ForkSafePeriodicExportingMetricReader" if reads_through else None)
    assert out["values"] == [2, 5]  # cumulative either way


def test_the_resource_is_hashed_once_and_stays_so_after_a_merge(monkeypatch):
    from opentelemetry.sdk.resources import Resource

    resource = distro.build_resource(settings(RENDER))
    calls = []
    original = Resource.__hash__
    monkeypatch.setattr(Resource, "__hash__", lambda self: calls.append(1) or original(self))
    assert hash(resource) == hash(resource) == hash(Resource(resource.attributes, resource.schema_url))
    assert len(calls) == 2  # once for ours, once for the plain copy
    merged = resource.merge(Resource({"service.instance.id": "srv-1-abc-w0"}))
    assert isinstance(merged, distro.HashOnceResource)
    assert merged.attributes["service.instance.id"] == "srv-1-abc-w0" and merged == Resource(merged.attributes, merged.schema_url)
    hash(merged), hash(merged)
    assert len(calls) == 3
