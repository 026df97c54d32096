"""The local metric reader: the same meters that go out over OTLP, kept in the
process for the local endpoints and the recovery rules.

The configurator always adds one :class:`LocalMetricReader` to the meter
provider, next to the OTLP reader, with the same cardinality limits, so a
number shown locally is a number the backend also gets. It is a pull reader:
whoever needs fresh values calls :meth:`LocalMetricReader.refresh`; nothing is
collected on the request path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricReader,
    MetricsData,
)

_CUMULATIVE = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
}


@dataclass(frozen=True)
class Snapshot:
    """The points of one collection and when it was taken (``time.time()``)."""

    data: MetricsData | None
    collected_at: float

    def metrics(self) -> Iterator[Metric]:
        if self.data is None:
            return
        for resource_metrics in self.data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                yield from scope_metrics.metrics

    def find(self, name: str) -> Metric | None:
        for metric in self.metrics():
            if metric.name == name:
                return metric
        return None


class LocalMetricReader(MetricReader):
    """Keeps the most recent collection; always cumulative."""

    def __init__(self, cardinality_limits: dict[type, int] | None = None) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE, cardinality_limits=cardinality_limits)
        self._lock = threading.Lock()
        self._latest = Snapshot(None, 0.0)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        with self._lock:
            self._latest = Snapshot(metrics_data, time.time())

    def refresh(self) -> Snapshot:
        """Collect now and return the new snapshot."""
        self.collect()
        return self.latest()

    def latest(self) -> Snapshot:
        """The last snapshot taken (possibly empty), without collecting."""
        with self._lock:
            return self._latest

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._latest = Snapshot(None, 0.0)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to flush: the points never leave the process."""
