"""The Grafana dashboard: importable JSON, a sound layout, the data source only
through ``__inputs``, service and instance variables, and every query written
against documented metrics and labels.

There is no Grafana on the build machines: the JSON is checked by parsing it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundle import checks, contract, promql

DASHBOARDS = sorted((contract.ROOT / "dashboards" / "grafana").glob("*.json"))
DS_INPUT = "DS_PROMETHEUS"
DS_REF = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GRID_WIDTH = 24

# What the issue asks each row to show, as the metrics that must be queried.
REQUIRED_METRICS = {
    "http_server_request_duration_seconds_count",  # rate and errors
    "http_server_request_duration_seconds_bucket",  # p50/p95/p99 by route
    "otel_render_instance_memory_usage_bytes",  # usage vs limit
    "otel_render_instance_memory_limit_bytes",
    "cpython_gc_collections_total",  # GC
    "otel_render_recovery_actions_total",  # recovery actions
    "db_client_connection_count",  # pool used/idle
    "db_client_connection_pending_requests",  # pending
    "db_client_connection_timeouts_total",  # timeouts
    "db_client_operation_duration_seconds_bucket",  # query latency
    "otel_render_db_status_ratio",  # status
    "otel_render_scheduler_job_runs_total",  # runs by outcome
    "otel_render_scheduler_job_duration_seconds_bucket",  # duration
    "otel_render_scheduler_job_last_success_seconds",  # time since last success
    "otelcol_exporter_sent_spans_total",  # exported
    "otelcol_exporter_send_failed_spans_total",  # dropped
    "render_service_memory_usage_bytes",  # Render's own metrics (optional row)
}
REQUIRED_ROWS = ("Traffic", "Memory", "Database", "Schedulers", "Telemetry pipeline", "Render metrics stream")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def layout_problems(dashboard: dict[str, Any]) -> list[str]:
    """Duplicate ids, panels off the grid, and overlapping panels."""
    problems: list[str] = []
    ids = [panel.get("id") for panel in all_panels(dashboard)]
    for repeated in contract.duplicates(ids):
        problems.append(f"panel id {repeated} is used twice")
    if None in ids:
        problems.append("a panel has no id")

    def check_group(panels: list[dict[str, Any]], where: str) -> None:
        placed: list[tuple[str, int, int, int, int]] = []
        for panel in panels:
            grid = panel.get("gridPos") or {}
            x, y, w, h = (grid.get(key) for key in ("x", "y", "w", "h"))
            title = f"{where}{panel.get('title')!r} (id {panel.get('id')})"
            if not all(isinstance(value, int) for value in (x, y, w, h)) or w <= 0 or h <= 0 or x < 0 or y < 0:
                problems.append(f"{title}: bad gridPos {grid}")
                continue
            if x + w > GRID_WIDTH:
                problems.append(f"{title}: reaches column {x + w}, past {GRID_WIDTH}")
            for other, ox, oy, ow, oh in placed:
                if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                    problems.append(f"{title} overlaps {other}")
            placed.append((title, x, y, w, h))

    check_group(dashboard.get("panels", []), "")
    for row in dashboard.get("panels", []):
        if row.get("type") == "row" and row.get("panels"):
            if not row.get("collapsed"):
                problems.append(f"row {row.get('title')!r} holds panels but is not collapsed")
            check_group(row["panels"], f"in row {row.get('title')!r}: ")
    return problems


def datasource_problems(dashboard: dict[str, Any]) -> list[str]:
    """Every data source reference goes through the ``DS_PROMETHEUS`` input."""
    problems: list[str] = []
    inputs = {item.get("name"): item for item in dashboard.get("__inputs", [])}
    declared = inputs.get(DS_INPUT)
    if not declared or declared.get("type") != "datasource" or declared.get("pluginId") != "prometheus":
        problems.append(f"__inputs must declare {DS_INPUT} as a prometheus data source")
    for path, value in _walk(dashboard):
        if not path.endswith(".datasource") or path.startswith(".annotations"):
            continue
        if value != DS_REF:
            problems.append(f"{path}: {value!r} is not the {DS_INPUT} input {DS_REF!r}")
    for panel in all_panels(dashboard):
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != DS_REF:
            problems.append(f"panel {panel.get('title')!r} has no data source")
        for target in panel.get("targets", []):
            if target.get("datasource") != DS_REF:
                problems.append(f"panel {panel.get('title')!r} target {target.get('refId')} has no data source")
    return problems


@pytest.fixture(params=DASHBOARDS, ids=[path.name for path in DASHBOARDS])
def dashboard(request) -> dict[str, Any]:
    return _load(request.param)


def test_there_is_a_dashboard():
    assert [path.name for path in DASHBOARDS] == ["otel-render-overview.json"]


def test_importable_shape(dashboard):
    assert dashboard["title"] and dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["id"] is None, "an exported id would clash on import; keep it null"
    assert isinstance(dashboard["schemaVersion"], int)
    assert {item["id"] for item in dashboard["__requires"]} >= {"grafana", "prometheus"}
    used_types = {panel["type"] for panel in all_panels(dashboard)} - {"row"}
    required_panels = {item["id"] for item in dashboard["__requires"] if item["type"] == "panel"}
    assert used_types <= required_panels


def test_layout(dashboard):
    assert layout_problems(dashboard) == []


def test_datasource_only_through_the_input(dashboard):
    assert datasource_problems(dashboard) == []


def test_service_and_instance_variables(dashboard):
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert {"service", "instance"} <= set(variables)
    for name, label in (("service", "job"), ("instance", "instance")):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DS_REF
        refs, queried_label = promql.label_values_query(variable["query"]["query"])
        assert queried_label == label
        assert variable["definition"] == variable["query"]["query"]
    # the instance list follows the chosen services
    assert '$service' in variables["instance"]["query"]["query"]


def test_rows_the_issue_asks_for(dashboard):
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    titles = [row["title"] for row in rows]
    for wanted in REQUIRED_ROWS:
        assert any(title.startswith(wanted) for title in titles), f"no row {wanted!r} in {titles}"
    render_row = next(row for row in rows if row["title"].startswith("Render metrics stream"))
    assert render_row["collapsed"] and render_row["panels"], "the optional Render row is collapsed with its panels inside"


def _targets(dashboard):
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def test_every_query_uses_documented_metrics_and_labels(dashboard):
    documented = contract.dashboard_contract()
    problems: list[str] = []
    for panel, target in _targets(dashboard):
        where = f"panel {panel['title']!r} {target['refId']}"
        problems += checks.promql_problems(
            target["expr"], where, documented, extra_labels=promql.legend_labels(target.get("legendFormat", ""))
        )
    for variable in dashboard["templating"]["list"]:
        refs_and_label = promql.label_values_query(variable["query"]["query"])
        assert refs_and_label is not None, variable["name"]
        selector_text = variable["query"]["query"][len("label_values(") :].rsplit(",", 1)[0]
        problems += checks.promql_problems(
            selector_text, f"variable {variable['name']}", documented, extra_labels=[refs_and_label[1]], allow_target_info=True
        )
    assert problems == []


def test_app_queries_follow_the_service_and_instance_variables(dashboard):
    package_series = set(contract.package_contract().by_series())
    unfiltered = []
    for panel, target in _targets(dashboard):
        for selector in promql.references(target["expr"]).selectors:
            if selector.name in package_series and not {"job", "instance"} <= set(selector.labels):
                unfiltered.append(f"{panel['title']!r}: {selector.name}")
        assert '$service' in target["expr"] or '$collector' in target["expr"], panel["title"]
    assert unfiltered == []


def test_the_dashboard_shows_what_the_issue_asks_for(dashboard):
    referenced = {
        selector.name for _, target in _targets(dashboard) for selector in promql.references(target["expr"]).selectors
    }
    assert REQUIRED_METRICS - referenced == set()
    quantiles = {expr.split(",")[0] for _, t in _targets(dashboard) if (expr := t["expr"]).startswith("histogram_quantile")}
    assert {"histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99"} <= quantiles


# --------------------------------------------------------------------------
# the checks themselves catch what they are for


def test_the_checks_catch_duplicates_overlaps_and_hard_coded_sources():
    original = _load(DASHBOARDS[0])
    assert layout_problems(original) == [] and datasource_problems(original) == []

    mutant = copy.deepcopy(original)
    panels = [panel for panel in mutant["panels"] if panel["type"] != "row"]
    panels[1]["id"] = panels[0]["id"]
    panels[2]["gridPos"] = dict(panels[0]["gridPos"], x=panels[0]["gridPos"]["x"] + 1)
    panels[3]["gridPos"]["w"] = 30
    text = "\n".join(layout_problems(mutant))
    assert f"panel id {panels[0]['id']} is used twice" in text
    assert "overlaps" in text
    assert "past 24" in text

    mutant = copy.deepcopy(original)
    first = next(panel for panel in mutant["panels"] if panel["type"] != "row")
    first["targets"][0]["datasource"] = {"type": "prometheus", "uid": "grafanacloud-prom"}
    mutant["__inputs"] = []
    text = "\n".join(datasource_problems(mutant))
    assert "grafanacloud-prom" in text and "__inputs must declare" in text
