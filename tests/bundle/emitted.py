"""What the package emits, compared with what docs/metrics.md documents.

This module owns the comparison, as pure functions over plain records, so it
is tested with synthetic metrics here and applied to what the example app
really exports in tests/integration/test_emitted_metrics.py:

- :func:`summarize` folds the metrics an OTLP receiver decoded (one record per
  export request) into one :class:`EmittedMetric` per name: its OTLP kind, its
  unit and every attribute key seen on any point;
- :func:`emitted_problems`: every emitted metric is documented, with the
  documented instrument kind, unit and attributes;
- :func:`missing_from_emission`: every documented metric is emitted (the
  reverse direction), minus those that only appear when their event happens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bundle.contract import Contract
from bundle.promnames import COUNTER, GAUGE, HISTOGRAM, SUM


@dataclass
class EmittedMetric:
    """Everything seen of one metric name across exports."""

    name: str
    kinds: set[str] = field(default_factory=set)
    units: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)
    scopes: set[str] = field(default_factory=set)


def otlp_kind(kind: str, is_monotonic: bool | None) -> str:
    """An OTLP data kind as the contract names it: a monotonic sum is a counter."""
    if kind == "sum":
        return COUNTER if is_monotonic else SUM
    if kind in (GAUGE, HISTOGRAM):
        return kind
    return kind  # exponential_histogram, summary: never documented, so reported


def summarize(received: Iterable[Any]) -> dict[str, EmittedMetric]:
    """Fold ``ReceivedMetric``-like records (name, kind, is_monotonic, unit, scope, points)."""
    summary: dict[str, EmittedMetric] = {}
    for metric in received:
        entry = summary.setdefault(metric.name, EmittedMetric(metric.name))
        entry.kinds.add(otlp_kind(metric.kind, metric.is_monotonic))
        entry.units.add(metric.unit)
        entry.scopes.add(metric.scope)
        for point in metric.points:
            entry.attributes.update(point.attributes)
    return summary


def emitted_problems(emitted: Mapping[str, EmittedMetric], contract: Contract) -> list[str]:
    """Emitted metrics that are undocumented, or differ from their row."""
    documented = contract.by_name()
    problems: list[str] = []
    for name, metric in sorted(emitted.items()):
        row = documented.get(name)
        scopes = ", ".join(sorted(metric.scopes))
        if row is None:
            problems.append(f"{name} (scope {scopes}) is emitted but not documented in docs/metrics.md")
            continue
        if metric.kinds != {row.kind}:
            problems.append(f"{name}: emitted as {sorted(metric.kinds)}, documented as {row.instrument} ({row.kind})")
        if metric.units != {row.unit}:
            problems.append(f"{name}: emitted with unit {sorted(metric.units)}, documented as {row.unit!r}")
        extra = metric.attributes - set(row.attributes)
        if extra:
            problems.append(f"{name}: attributes {sorted(extra)} are emitted but not documented")
    return problems


def missing_from_emission(
    emitted: Mapping[str, EmittedMetric], contract: Contract, only_on_event: Mapping[str, str]
) -> list[str]:
    """Documented metrics nobody emitted (those in ``only_on_event`` excused, with their reason)."""
    return sorted(row.name for row in contract.rows if row.name not in emitted and row.name not in only_on_event)
