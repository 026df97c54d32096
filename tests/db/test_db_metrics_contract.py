"""The database metrics the package emits are exactly those docs/metrics.md lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
KINDS = {"Histogram": "histogram", "Counter": "counter", "UpDownCounter": "updown", "Gauge": "gauge"}


def documented_database_metrics() -> dict[str, tuple[str, str, set[str]]]:
    section = METRICS_DOC.read_text().split("## Database", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \| ([A-Za-z]+)[^|]* \| `([^`]+)` \| ([^|]*) \|", line)
        if match:
            attributes = set(re.findall(r"`([^`]+)`", match.group(4)))
            rows[match.group(1)] = (KINDS[match.group(2)], match.group(3), attributes)
    return rows


def emitted_kind(metric) -> str:
    data = metric.data
    name = type(data).__name__
    if name == "Histogram":
        return "histogram"
    if name == "Gauge":
        return "gauge"
    return "counter" if data.is_monotonic else "updown"


def test_every_database_metric_is_documented_with_its_instrument_unit_and_attributes(instrument):
    telemetry = instrument(OTEL_RENDER_DB_TIMEOUT_S="0.5")
    engine = sqlalchemy.create_engine("sqlite:///:memory:", poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.1)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            engine.connect()
        with pytest.raises(OperationalError):
            connection.exec_driver_sql(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
            ).all()
    emitted = {}
    for resource_metrics in telemetry.reader.get_metrics_data().resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                attributes = set().union(*(point.attributes.keys() for point in metric.data.data_points))
                emitted[metric.name] = (emitted_kind(metric), metric.unit, attributes)
    documented = documented_database_metrics()
    assert set(emitted) == set(documented)
    for name, (kind, unit, attributes) in emitted.items():
        documented_kind, documented_unit, documented_attributes = documented[name]
        assert (kind, unit) == (documented_kind, documented_unit), name
        assert attributes <= documented_attributes, (name, attributes - documented_attributes)
    engine.dispose()
