"""One side of ``bench/db_overhead.py``: time SQLAlchemy statements with one
instrumentation (or none) and print the figures as one JSON line.

    python workload_db.py SIDE URL [URL...]

SIDE is ``bare`` (no OpenTelemetry), ``contrib`` (opentelemetry-instrumentation-
sqlalchemy) or ``otel-render``. Both instrumented sides get the same SDK
set-up: a tracer provider whose batch processor feeds an exporter that drops
everything (so export costs nothing and is the same for both), and a meter
provider with an in-memory reader that is never collected during the timing.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import sqlalchemy

ROUNDS = 7
PER_ROUND = 2000


def sdk():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def instrument(side: str) -> None:
    if side == "bare":
        return
    tracer_provider, meter_provider = sdk()
    if side == "contrib":
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    else:
        from otel_render.db.instrumentor import SQLAlchemyInstrumentor
    SQLAlchemyInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)


def per_query_us(run) -> float:
    run(200)  # warm up: compiled cache, pool, statement caches
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run(PER_ROUND)
        samples.append((time.perf_counter() - started) / PER_ROUND * 1e6)
    return statistics.median(samples)


def measure(url: str) -> dict[str, float]:
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS bench_items")
        connection.exec_driver_sql("CREATE TABLE bench_items (id integer PRIMARY KEY, name varchar(50))")
        connection.execute(
            sqlalchemy.text("INSERT INTO bench_items VALUES (:id, :name)"), [{"id": i, "name": f"item {i}"} for i in range(100)]
        )
    select = sqlalchemy.text("SELECT name FROM bench_items WHERE id = :id")

    def statements(count: int) -> None:
        with engine.connect() as connection:
            for index in range(count):
                connection.execute(select, {"id": index % 100}).scalar()

    def checkouts(count: int) -> None:
        for index in range(count):
            with engine.connect() as connection:
                connection.execute(select, {"id": index % 100}).scalar()

    figures = {"statement_us": per_query_us(statements), "checkout_and_statement_us": per_query_us(checkouts)}
    engine.dispose()
    return figures


def main() -> None:
    side, urls = sys.argv[1], sys.argv[2:]
    instrument(side)
    print(json.dumps({url.split(":", 1)[0]: measure(url) for url in urls}))


if __name__ == "__main__":
    main()
