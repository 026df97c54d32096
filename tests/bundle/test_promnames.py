"""The OpenTelemetry -> Prometheus name translation, and the Prometheus column
of docs/metrics.md against it."""

from __future__ import annotations

import pytest

from bundle import contract, promql
from bundle.promnames import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    SUM,
    label_name,
    prometheus_name,
    series_names,
    unit_suffixes,
)


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        # the examples of the OpenTelemetry <-> Prometheus compatibility spec and otlptranslator's tests
        ("http.server.request.duration", "s", HISTOGRAM, "http_server_request_duration_seconds"),
        ("process.memory.usage", "By", SUM, "process_memory_usage_bytes"),
        ("process.cpu.time", "s", COUNTER, "process_cpu_time_seconds_total"),
        ("requests.count", "1", COUNTER, "requests_count_total"),
        ("memory.usage", "By", GAUGE, "memory_usage_bytes"),
        # {annotation} units add nothing
        ("http.server.active_requests", "{request}", SUM, "http_server_active_requests"),
        ("cpython.gc.collections", "{collection}", COUNTER, "cpython_gc_collections_total"),
        # unit "1": _ratio for gauges only
        ("otel_render.db.status", "1", GAUGE, "otel_render_db_status_ratio"),
        ("queue.fill", "1", SUM, "queue_fill"),
        ("system.cpu.utilization.ratio", "1", GAUGE, "system_cpu_utilization_ratio"),
        # "per" units
        ("network.io", "By/s", GAUGE, "network_io_bytes_per_second"),
        ("disk.ops", "{op}/s", COUNTER, "disk_ops_per_second_total"),
        # a unit word already in the name, and "total" already in the name, are not repeated
        ("request.duration.seconds", "s", HISTOGRAM, "request_duration_seconds"),
        ("requests.total", "{request}", COUNTER, "requests_total"),
        ("total.requests", "{request}", COUNTER, "requests_total"),
        # other characters, runs of separators, a leading digit, unknown units
        ("otel_render.http.server.db_time", "s", HISTOGRAM, "otel_render_http_server_db_time_seconds"),
        ("a--b..c__d", "ms", GAUGE, "a_b_c_d_milliseconds"),
        ("2xx.count", "{r}", COUNTER, "_2xx_count_total"),
        ("queue.depth", "items", GAUGE, "queue_depth_items"),
        ("temperature", "Cel", GAUGE, "temperature_celsius"),
    ],
)
def test_translation(name, unit, kind, expected):
    assert prometheus_name(name, unit, kind) == expected


def test_unit_suffixes():
    assert unit_suffixes("s") == ("seconds", "")
    assert unit_suffixes("By/s") == ("bytes", "per_second")
    assert unit_suffixes("{request}") == ("", "")
    assert unit_suffixes("1") == ("", "")
    assert unit_suffixes("") == ("", "")


def test_unknown_kind_and_empty_names_are_refused():
    with pytest.raises(ValueError, match="unknown metric kind"):
        prometheus_name("x", "s", "summary-ish")
    with pytest.raises(ValueError, match="translates to nothing"):
        prometheus_name("...", "{x}", GAUGE)


def test_histograms_are_queried_through_three_series():
    assert series_names("x_seconds", HISTOGRAM) == ("x_seconds_bucket", "x_seconds_sum", "x_seconds_count")
    assert series_names("x_total", COUNTER) == ("x_total",)


@pytest.mark.parametrize(
    ("attribute", "label"),
    [
        ("http.route", "http_route"),
        ("db.client.connection.pool.name", "db_client_connection_pool_name"),
        ("job.id", "job_id"),
        ("state", "state"),
        ("2fa", "key_2fa"),
        ("_private", "key_private"),
    ],
)
def test_label_names(attribute, label):
    assert label_name(attribute) == label


# --------------------------------------------------------------------------
# docs/metrics.md


def test_the_contract_parses_without_problems_and_has_no_duplicates():
    package = contract.package_contract()
    assert package.problems == []
    assert len(package.rows) >= 30, "docs/metrics.md lost its tables?"
    assert contract.duplicates(row.name for row in package.rows) == []
    assert contract.duplicates(row.prometheus for row in package.rows) == []


def test_every_prometheus_name_in_docs_metrics_md_follows_the_translation():
    wrong = [
        f"{row.source}:{row.line} {row.name}: documented {row.prometheus}, Grafana Cloud shows {row.expected_prometheus}"
        for row in contract.package_contract().rows
        if row.prometheus != row.expected_prometheus
    ]
    assert wrong == []


def test_every_prometheus_name_in_the_external_table_follows_the_translation():
    external = contract.external_contract()
    assert external.problems == []
    wrong = [
        f"{row.source}:{row.line} {row.name}: documented {row.prometheus}, expected {row.expected_prometheus}"
        for row in external.rows
        if row.prometheus != row.expected_prometheus
    ]
    assert wrong == []
    # The package and the outside world never document the same name twice.
    overlap = {row.name for row in external.rows} & {row.name for row in contract.package_contract().rows}
    assert overlap == set()


def test_a_wrong_prometheus_column_is_caught():
    text = (
        "## X\n\n| Name | Instrument | Unit | Attributes | Prometheus | Meaning |\n|---|---|---|---|---|---|\n"
        "| `a.b` | Counter | `s` | `k.v` | `a_b_seconds` | forgot _total |\n"
        "| `a.c` | Thing | `s` | | `a_c` | unknown instrument |\n"
    )
    parsed = contract.parse_tables(text, "test.md")
    assert len(parsed.problems) == 1 and "test.md:6" in parsed.problems[0]
    (row,) = parsed.rows
    assert row.expected_prometheus == "a_b_seconds_total" != row.prometheus
    assert row.labels == {"k_v", "job", "instance"}


# --------------------------------------------------------------------------
# the PromQL reader the dashboard and alert checks rely on


def test_promql_references():
    refs = promql.references(
        'histogram_quantile(0.95, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket'
        '{job=~"$service", instance=~"${instance}"}[$__rate_interval]))) > 0.5 '
        'and on(job) sum without (instance) (x_total offset 5m) or vector(0)'
    )
    assert refs.selectors == [
        promql.Selector("http_server_request_duration_seconds_bucket", ("job", "instance")),
        promql.Selector("x_total", ()),
    ]
    assert refs.grouping == {"le", "http_route", "job", "instance"}
    assert refs.functions == {"histogram_quantile", "sum", "rate", "vector"}


def test_promql_refuses_nameless_selectors_and_unknown_characters():
    with pytest.raises(promql.PromQLReadError, match="without a metric name"):
        promql.references('{__name__="x"}')
    with pytest.raises(promql.PromQLReadError, match="cannot read"):
        promql.references("x # comment")


def test_grafana_helpers():
    refs, label = promql.label_values_query('label_values(target_info{job=~"$service"}, instance)')
    assert label == "instance" and refs.selectors == [promql.Selector("target_info", ("job",))]
    assert promql.label_values_query("query_result(up)") is None
    assert promql.legend_labels("{{http_route}} {{ le }} p95") == {"http_route", "le"}
