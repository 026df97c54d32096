"""Cross-checks of queries against the metric contract.

This module owns the rule every dashboard panel, alert rule and Honeycomb query
must pass: each metric (or histogram series) it references is documented, each
label it filters or groups on is an attribute of a referenced metric (or a
label every series carries: ``job``, ``instance``; ``le`` on ``_bucket``
series), and each PromQL function exists. Functions return problems as
readable lines, so a failing test lists every mistake at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from bundle import promql
from bundle.contract import RESOURCE_LABELS, Contract, MetricRow

# target_info carries the resource attributes; dashboards use it only to list
# the services and instances that run otel-render.
TARGET_INFO = "target_info"
TARGET_INFO_LABELS = frozenset({"job", "instance", "telemetry_distro_name", "render_service_id", "render_instance_id"})


def series_labels(row: MetricRow, series: str) -> frozenset[str]:
    """Labels on one series of ``row``: ``le`` only on a histogram's ``_bucket``."""
    if series.endswith("_bucket"):
        return row.labels
    return row.labels - {"le"}


def promql_problems(
    expression: str,
    where: str,
    contract: Contract,
    *,
    extra_labels: Iterable[str] = (),
    allow_target_info: bool = False,
) -> list[str]:
    """Everything in ``expression`` that the contract does not back."""
    try:
        refs = promql.references(expression)
    except promql.PromQLReadError as error:
        return [f"{where}: {error}"]
    by_series = contract.by_series()
    problems: list[str] = []
    for function in sorted(refs.functions - promql.FUNCTIONS):
        problems.append(f"{where}: {function}() is not a PromQL function")
    if not refs.selectors:
        problems.append(f"{where}: references no metric: {expression!r}")
    available: set[str] = set(RESOURCE_LABELS)
    for selector in refs.selectors:
        if allow_target_info and selector.name == TARGET_INFO:
            labels = TARGET_INFO_LABELS
        else:
            row = by_series.get(selector.name)
            if row is None:
                problems.append(
                    f"{where}: {selector.name} is not a documented metric or histogram series "
                    "(docs/metrics.md, dashboards/README.md)"
                )
                continue
            labels = series_labels(row, selector.name)
        available |= labels
        for label in sorted(set(selector.labels) - labels):
            problems.append(f"{where}: {selector.name} has no label {label!r} (it has {', '.join(sorted(labels))})")
    for label in sorted((refs.grouping | set(extra_labels)) - available):
        problems.append(f"{where}: no metric in the expression has the label {label!r}")
    return problems
