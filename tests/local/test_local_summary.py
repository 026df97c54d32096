"""What the endpoints say, computed from meters recorded with the real SDK
under the names docs/metrics.md fixes: requests per route, database pool,
schedulers, the telemetry pipeline, and recent windows."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from otel_render.local import summary
from otel_render.local.reader import LocalMetricReader
from otel_render.local.snapshot import ProcessInfo, ProcessSnapshot, merge_instance, series_from_metrics_data

SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


def view_of(*recorders):
    """One process per recorder, each with its own provider, merged."""
    snapshots = []
    for pid, record in enumerate(recorders, start=1):
        reader = LocalMetricReader()
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        record(provider.get_meter("test"))
        series = series_from_metrics_data(reader.refresh().data)
        snapshots.append(ProcessSnapshot(ProcessInfo(pid, 100.0 + pid, f"w{pid}"), float(pid), series))
        provider.shutdown()
    return merge_instance(snapshots)


def http_traffic(route, statuses, duration=0.02):
    def record(meter):
        histogram = meter.create_histogram(
            "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS
        )
        for status in statuses:
            attributes = {"http.request.method": "GET", "http.route": route, "http.response.status_code": status}
            if status >= 500:
                attributes["error.type"] = str(status)
            histogram.record(duration, attributes)

    return record


def test_requests_per_route_are_counted_over_the_workers_with_5xx_as_errors():
    view = view_of(http_traffic("/items/<id>", [200] * 8 + [500, 404]), http_traffic("/items/<id>", [200] * 10))
    metrics = summary.request_metrics(view, None)
    assert metrics["total"] == 20 and metrics["errors"] == 1 and metrics["errorRate"] == 0.05
    (route,) = summary.routes(view, None)
    assert (route["method"], route["route"], route["count"], route["errors"]) == ("GET", "/items/<id>", 20, 1)
    assert route["p50"] == pytest.approx(0.02, abs=0.001)
    assert route["p99"] <= 0.02


def test_the_recent_window_counts_only_what_happened_inside_it():
    history = summary.RequestHistory(window_s=60)
    history.add(0.0, summary.request_totals(view_of(http_traffic("/", [200] * 10))))
    history.add(30.0, summary.request_totals(view_of(http_traffic("/", [200] * 10 + [500] * 5))))
    history.add(70.0, summary.request_totals(view_of(http_traffic("/", [200] * 10 + [500] * 5 + [200] * 3))))
    window = history.window(70.0)
    # The entry at 0 s fell out; the one at 30 s is the baseline.
    assert window.seconds == 40.0
    assert (window.totals.overall.total, window.totals.overall.errors) == (3, 0)
    history.add(100.0, summary.request_totals(view_of(http_traffic("/", [200] * 10 + [500] * 5 + [200] * 3))))
    assert history.window(100.0).totals.overall.total == 0


def test_the_database_pool_is_summed_per_pool_over_the_workers():
    def pool(used, idle):
        def record(meter):
            count = meter.create_up_down_counter("db.client.connection.count")
            pool_name = {"db.client.connection.pool.name": "db:5432/shop"}
            count.add(used, {**pool_name, "db.client.connection.state": "used"})
            count.add(idle, {**pool_name, "db.client.connection.state": "idle"})
            meter.create_up_down_counter("db.client.connection.max").add(15, pool_name)
            meter.create_counter("db.client.connection.timeouts").add(1, pool_name)
            meter.create_gauge("otel_render.db.status").set(1, pool_name)

        return record

    result = summary.database_pool(view_of(pool(2, 3), pool(1, 4)))
    assert (result["used"], result["idle"], result["max"], result["timeouts"]) == (3, 7, 30, 2)
    assert result["pools"][0]["name"] == "db:5432/shop" and result["pools"][0]["up"] is True


def test_scheduler_jobs_and_states_are_reported_per_job_and_per_process():
    def runner(meter):
        runs = meter.create_counter("otel_render.scheduler.job.runs")
        runs.add(9, {"scheduler.name": "main", "job.id": "count-items", "outcome": "success"})
        runs.add(1, {"scheduler.name": "main", "job.id": "count-items", "outcome": "error"})
        meter.create_gauge("otel_render.scheduler.job.last_success").set(
            1700.0, {"scheduler.name": "main", "job.id": "count-items"}
        )
        state = meter.create_gauge("otel_render.scheduler.state")
        state.set(1, {"scheduler.name": "main", "state": "running"})
        state.set(0, {"scheduler.name": "main", "state": "dead"})

    result = summary.schedulers(view_of(runner))
    (job,) = result["jobs"]
    assert job["runs"] == {"success": 9, "error": 1} and job["lastSuccess"] == 1700.0
    assert result["states"] == [{"scheduler": "main", "state": "running", "process": "w1", "pid": 1}]


def test_the_pipeline_section_reads_the_sdks_self_metrics():
    def sdk(meter):
        attributes = {
            "otel.component.type": "batching_span_processor",
            "otel.component.name": "batching_span_processor/0",
        }
        processed = meter.create_counter("otel.sdk.processor.span.processed")
        processed.add(40, attributes)
        processed.add(2, {**attributes, "error.type": "queue_full"})
        exported = meter.create_counter("otel.sdk.exporter.span.exported")
        exported.add(38, {"otel.component.type": "otlp_http_span_exporter"})
        exported.add(2, {"otel.component.type": "otlp_http_span_exporter", "error.type": "ConnectionError"})

    result = summary.pipeline(view_of(sdk))
    assert result["spans"]["processed"] == 40 and result["spans"]["dropped"] == {"queue_full": 2}
    assert result["spans"]["exported"] == 38 and result["spans"]["exportFailed"] == {"ConnectionError": 2}


def test_every_metric_is_listed_by_name_whatever_it_is_called():
    def app(meter):
        meter.create_counter("app.session_tokens.issued").add(4)

    (entry,) = summary.all_metrics(view_of(app))
    assert entry["name"] == "app.session_tokens.issued" and entry["points"] == [{"attributes": {}, "value": 4}]


def test_sections_without_their_metrics_are_empty_not_missing():
    empty = merge_instance([])
    assert summary.database(empty)["pool"]["pools"] == []
    assert summary.schedulers(empty) == {"jobs": [], "states": [], "restarts": {}}
    assert summary.request_metrics(empty, None)["total"] == 0
    assert summary.memory_usage(empty)["heapUsed"] is None
