"""The metric contract, read from the Markdown tables that document it.

This module owns parsing those tables into :class:`MetricRow` records:

- ``docs/metrics.md``: every metric the package emits (the contract the
  integrations implement);
- ``dashboards/README.md``: the metrics the bundled dashboards and alerts use
  that do *not* come from the package (the Collector's own telemetry, Render's
  metrics stream).

A table row reads ``| `name` | instrument | `unit` | attributes | `prometheus` | meaning |``.
Rows that do not parse are reported by :func:`parse_tables` with their line
number, so a typo in the docs fails a test instead of silently dropping a row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bundle.promnames import COUNTER, GAUGE, HISTOGRAM, SUM, label_name, prometheus_name, series_names

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_METRICS_DOC = ROOT / "docs" / "metrics.md"
EXTERNAL_METRICS_DOC = ROOT / "dashboards" / "README.md"

# Instrument column -> OTLP kind. "(observable)" does not change the kind.
INSTRUMENT_KINDS: dict[str, str] = {
    "Counter": COUNTER,
    "UpDownCounter": SUM,
    "Gauge": GAUGE,
    "Histogram": HISTOGRAM,
}

# Labels Grafana Cloud derives from the resource on every series:
# service.name -> job, service.instance.id -> instance.
RESOURCE_LABELS = frozenset({"job", "instance"})

_CODE = re.compile(r"`([^`]*)`")


@dataclass(frozen=True)
class MetricRow:
    """One documented metric."""

    name: str
    instrument: str
    kind: str
    unit: str
    attributes: tuple[str, ...]
    prometheus: str
    section: str
    source: str
    line: int

    @property
    def expected_prometheus(self) -> str:
        """The Prometheus name by the translation rules (may differ from the doc)."""
        return prometheus_name(self.name, self.unit, self.kind)

    @property
    def series(self) -> tuple[str, ...]:
        """The series names a query may select for this metric."""
        return series_names(self.prometheus, self.kind)

    @property
    def labels(self) -> frozenset[str]:
        """Labels its series carry: its attributes, the resource labels, ``le`` for buckets."""
        labels = {label_name(attribute) for attribute in self.attributes} | RESOURCE_LABELS
        if self.kind == HISTOGRAM:
            labels.add("le")
        return frozenset(labels)


@dataclass
class Contract:
    """Documented metrics, by OpenTelemetry name, with lookups by series."""

    rows: list[MetricRow]
    problems: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, MetricRow]:
        return {row.name: row for row in self.rows}

    def by_series(self) -> dict[str, MetricRow]:
        return {series: row for row in self.rows for series in row.series}

    def __add__(self, other: Contract) -> Contract:
        return Contract(self.rows + other.rows, self.problems + other.problems)


def instrument_kind(instrument: str) -> str | None:
    """``"Counter (observable)"`` -> ``"counter"``; None when unknown."""
    base = instrument.replace("(observable)", "").strip()
    return INSTRUMENT_KINDS.get(base)


def parse_tables(text: str, source: str) -> Contract:
    """Every metric row of every six-column metric table in ``text``."""
    rows: list[MetricRow] = []
    problems: list[str] = []
    section = ""
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            section = stripped.lstrip("#").strip()
            in_table = False
            continue
        if not stripped.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in stripped.strip("|").split("|")]
        if cells and cells[0] == "Name" and len(cells) == 6 and cells[4] == "Prometheus":
            in_table = True
            continue
        if not in_table or set(stripped) <= set("|-: "):
            continue
        where = f"{source}:{number}"
        if len(cells) != 6:
            problems.append(f"{where}: expected 6 cells, found {len(cells)}: {stripped}")
            continue
        name_cell, instrument, unit_cell, attribute_cell, prom_cell, _meaning = cells
        names = _CODE.findall(name_cell)
        units = _CODE.findall(unit_cell)
        proms = _CODE.findall(prom_cell)
        kind = instrument_kind(instrument)
        if len(names) != 1 or len(units) != 1 or len(proms) != 1 or kind is None:
            problems.append(f"{where}: cannot read name, instrument, unit or Prometheus name: {stripped}")
            continue
        rows.append(
            MetricRow(
                name=names[0],
                instrument=instrument,
                kind=kind,
                unit=units[0],
                attributes=tuple(_CODE.findall(attribute_cell)),
                prometheus=proms[0],
                section=section,
                source=source,
                line=number,
            )
        )
    return Contract(rows, problems)


def load(path: Path) -> Contract:
    return parse_tables(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))


def package_contract() -> Contract:
    """What the package emits: ``docs/metrics.md``."""
    return load(PACKAGE_METRICS_DOC)


def external_contract() -> Contract:
    """What the dashboards use from elsewhere: ``dashboards/README.md``."""
    return load(EXTERNAL_METRICS_DOC)


def dashboard_contract() -> Contract:
    """Every metric a dashboard, a Honeycomb query or an alert rule may reference."""
    return package_contract() + external_contract()


def duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated
