"""The local metric reader: the same meters that go out over OTLP, kept in the
process for the local endpoints and the recovery rules.

The configurator always gives the meter provider one
:class:`LocalMetricReader`, with the same cardinality limits as the OTLP
reader, so a number shown locally is a number the backend also gets. It is a
pull reader: whoever needs fresh values calls
:meth:`LocalMetricReader.refresh`; nothing is collected on the request path.

The SDK aggregates every measurement once per registered reader. When the
OTLP reader keeps its points exactly as the local reader would (cumulative for
every instrument kind, the default aggregations, the same cardinality limits:
the OTLP exporter's defaults), the local reader is not registered at all: it
reads the OTLP reader's aggregations (:meth:`LocalMetricReader.read_through`),
so each measurement is aggregated once and both read literally the same
numbers. Reading cumulative points more often changes nothing in them. When
the export asks for something else (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta``,
exponential histograms), the local reader keeps a storage of its own, always
cumulative, so the endpoints' numbers never depend on the export's choices
(:func:`can_read_through`).

After ``fork`` (gunicorn ``--preload``), a worker inherits the master's
meter provider with every point the master had recorded. The master keeps
reporting those itself, so :meth:`LocalMetricReader.reset_after_fork` clears,
in the child, what counts events (counters and histograms, in every reader of
the provider: the OTLP export as well), so that nothing is counted twice
across the instance. Up-down counters and gauges describe state the child
inherits along with the points (a connection pool's size, a queue's
capacity), so they are kept. The SDK offers no public way to do this; the
walk over its storage is guarded and logs once if the SDK changes shape.
"""

from __future__ import annotations

import logging
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
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation

_logger = logging.getLogger("otel_render.local")

#: Instruments whose points count events (reset in a forked child).
_EVENT_INSTRUMENTS = (Counter, Histogram, ObservableCounter)

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


def _aggregation_kind(aggregation: Any) -> Any:
    """``"default"`` for an aggregation that keeps what the SDK's default keeps
    (an explicit-bucket histogram with the instrument's advised buckets, as the
    OTLP exporter asks for, is one); otherwise the aggregation itself."""
    if isinstance(aggregation, DefaultAggregation):
        return "default"
    if (
        type(aggregation) is ExplicitBucketHistogramAggregation  # pylint: disable=unidiomatic-typecheck
        and getattr(aggregation, "_boundaries", ()) is None
        and getattr(aggregation, "_record_min_max", False) is True
    ):
        return "default"
    return aggregation


def _storage_shape(reader: MetricReader) -> tuple[Any, ...]:
    """What decides how a reader's storage aggregates: temporality, aggregation
    and cardinality limit per instrument class (SDK attributes, read guarded)."""
    # pylint: disable=protected-access
    return (
        dict(reader._instrument_class_temporality),
        {kind: _aggregation_kind(aggregation) for kind, aggregation in reader._instrument_class_aggregation.items()},
        dict(reader._instrument_class_cardinality_limit),
    )


def can_read_through(local: MetricReader, source: MetricReader) -> bool:
    """Whether ``local`` may read ``source``'s aggregations instead of its own:
    both keep exactly the same points (cumulative, default aggregations, same
    limits). Anything unknown (an SDK that stores this differently) says no."""
    try:
        wanted = _storage_shape(local)
        if _storage_shape(source) != wanted:
            return False
        return all(temporality is AggregationTemporality.CUMULATIVE for temporality in wanted[0].values()) and all(
            kind == "default" for kind in wanted[1].values()
        )
    except (AttributeError, TypeError):
        return False


class LocalMetricReader(MetricReader):
    """Keeps the most recent collection; always cumulative."""

    def __init__(self, cardinality_limits: dict[type, int] | None = None) -> None:
        super().__init__(preferred_temporality=_CUMULATIVE, cardinality_limits=cardinality_limits)
        self._lock = threading.Lock()
        self._latest = Snapshot(None, 0.0)
        self._source: MetricReader | None = None

    @property
    def source(self) -> MetricReader | None:
        """The reader whose aggregations this one reads (None: its own storage)."""
        return self._source

    def read_through(self, source: MetricReader) -> None:
        """Collect ``source``'s aggregations instead of registering a storage of
        our own. ``source`` must be registered on a meter provider and pass
        :func:`can_read_through`; this reader must not be registered."""
        collect = source._collect  # pylint: disable=protected-access
        if collect is None:
            raise ValueError("the source reader is not registered on a meter provider")
        if self._collect is not None:
            raise ValueError("this reader is registered on a meter provider already")

        def collect_source(_reader: MetricReader, timeout_millis: float = 10_000) -> Any:
            return collect(source, timeout_millis=timeout_millis)

        self._source = source
        self._set_collect_callback(collect_source)

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
        """In a forked child: forget the parent's snapshot and the event counts
        it had recorded in every reader of the provider (see the module docstring)."""
        self._lock = threading.Lock()
        self._latest = Snapshot(None, 0.0)
        # The provider's measurement consumer, whose bound method the collect callback is.
        collect = self._source._collect if self._source is not None else self._collect  # pylint: disable=protected-access
        consumer = getattr(collect, "__self__", None) if collect is not None else None
        if consumer is not None:
            reset_inherited_points(consumer)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to flush: the points never leave the process."""


def reset_inherited_points(consumer: Any, now_ns: int | None = None) -> int:
    """Clear counters and histograms in every reader storage of a provider's
    measurement consumer, and give every SDK lock a fresh instance (a lock held
    by another thread at fork time would stay held in the child forever).

    Returns how many metric streams were cleared. Never raises.
    """
    start = now_ns if now_ns is not None else time.time_ns()
    cleared = 0
    try:
        consumer._lock = threading.Lock()  # pylint: disable=protected-access
        for storage in consumer._reader_storages.values():  # pylint: disable=protected-access
            storage._lock = threading.RLock()  # pylint: disable=protected-access
            for instrument, matches in list(storage._instrument_view_instrument_matches.items()):  # pylint: disable=protected-access
                for match in matches:
                    match._lock = threading.Lock()  # pylint: disable=protected-access
                    if isinstance(instrument, _EVENT_INSTRUMENTS):
                        match._attributes_aggregation = {}  # pylint: disable=protected-access
                        match._previous_collection_start_nanos = start  # pylint: disable=protected-access
                        cleared += 1
                    else:
                        for aggregation in match._attributes_aggregation.values():  # pylint: disable=protected-access
                            aggregation._lock = threading.Lock()  # pylint: disable=protected-access
    except (AttributeError, TypeError):
        _logger.warning(
            "otel-render: this OpenTelemetry SDK version stores metrics differently; points recorded before "
            "fork may be counted again in each worker",
            exc_info=True,
        )
    return cleared
