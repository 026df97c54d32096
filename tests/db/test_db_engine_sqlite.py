"""The instrumentor on SQLite (the demo's database): spans, request counts,
the deadline, and a real uninstrument."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from otel_render import request_context
from otel_render.db import status as db_status
from otel_render.db.circuit import CLOSED
from otel_render.db.engine import STATE_KEY

SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def test_an_engine_created_before_instrumentation_is_covered(instrument):
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    telemetry = instrument()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("INSERT INTO items (name) VALUES ('hunter2')"))
        connection.execute(sqlalchemy.text("SELECT name FROM items WHERE id = :id"), {"id": 1}).all()
    insert, select = telemetry.spans()
    assert insert.name == "INSERT items" and select.name == "SELECT items"
    assert select.kind.name == "CLIENT"
    assert dict(select.attributes) == {
        "db.system.name": "sqlite",
        "db.operation.name": "SELECT",
        "db.collection.name": "items",
        "db.query.text": "SELECT name FROM items WHERE id = ?",
    }
    assert insert.attributes["db.query.text"] == "INSERT INTO items (name) VALUES (?)"
    assert telemetry.value("db.client.operation.duration", **{"db.operation.name": "SELECT"}) == 1


def test_statements_count_against_the_current_request(instrument):
    instrument()
    engine = sqlalchemy.create_engine("sqlite://")
    record = request_context.WorkRecord()
    token = request_context.begin(record)
    try:
        with engine.connect() as connection:
            for _ in range(3):
                connection.exec_driver_sql("SELECT 1")
    finally:
        request_context.end(token)
    assert record.db_queries == 3
    assert 0 < record.db_time_s < 5


def test_a_checkout_waiting_for_a_connection_counts_as_a_pending_request(instrument, tmp_path):
    telemetry = instrument()
    path = tmp_path / "pending.db"
    engine = sqlalchemy.create_engine(
        f"sqlite:///{path}", poolclass=sqlalchemy.pool.QueuePool, pool_size=1, max_overflow=0, pool_timeout=30
    )
    pool = {"db.client.connection.pool.name": f"sqlite:///{path}"}

    def pending() -> int:
        return telemetry.value("db.client.connection.pending_requests", **pool)

    holder = engine.connect()
    holder.exec_driver_sql("SELECT 1")
    assert pending() == 0
    waiter = threading.Thread(target=lambda: engine.connect().close())
    waiter.start()
    deadline = time.monotonic() + 10
    while pending() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # bounded wait for the other thread to block on the full pool
    assert pending() == 1
    holder.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert pending() == 0
    assert telemetry.value("db.client.connection.wait_time", **pool) == 2
    engine.dispose()


def test_query_text_can_be_switched_off(instrument):
    telemetry = instrument(OTEL_RENDER_DB_QUERY_TEXT="false")
    with sqlalchemy.create_engine("sqlite://").connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert "db.query.text" not in telemetry.spans()[0].attributes


def test_the_deadline_interrupts_a_runaway_sqlite_statement_without_calling_the_database_down(instrument):
    telemetry = instrument(OTEL_RENDER_DB_TIMEOUT_S="0.5")
    engine = sqlalchemy.create_engine("sqlite://")
    started = time.monotonic()
    with engine.connect() as connection, pytest.raises(OperationalError, match="interrupted"):
        connection.exec_driver_sql(SLOW).all()
    assert time.monotonic() - started < 10  # deadline 0.5 s + 0.25 s grace, ticked every 0.25 s
    assert telemetry.value("otel_render.db.deadline.exceeded", phase="query") == 1
    (span,) = telemetry.spans()
    assert span.attributes["error.type"] == "sqlite3.OperationalError"
    assert span.attributes["otel_render.db.deadline_exceeded"] == "query"
    (database,) = db_status.databases()
    assert database.breaker.state == CLOSED and database.tracker.status != db_status.DOWN
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1


def test_statements_are_traced_without_putting_engines_on_the_event_path(instrument):
    telemetry = instrument()
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        connection.execute(sqlalchemy.text("INSERT INTO items (id) VALUES (:id)"), [{"id": 1}, {"id": 2}])
        assert connection.exec_driver_sql("SELECT count(*) FROM items").scalar() == 2
    # No before/after_cursor_execute listeners: SQLAlchemy 2 keeps its fast path for every engine
    # (on 1.4, handle_error is still a connection event).
    if not sqlalchemy.__version__.startswith("1."):
        assert not engine._has_events and not Engine._has_events
    assert [span.name for span in telemetry.spans()] == ["CREATE", "INSERT items", "SELECT items"]
    assert telemetry.value("db.client.operation.duration", **{"db.operation.name": "INSERT"}) == 1


def test_uninstrument_removes_every_hook(instrument):
    engine = sqlalchemy.create_engine("sqlite:///:memory:", poolclass=sqlalchemy.pool.QueuePool)
    original_create_engine, original_raw_connection = sqlalchemy.create_engine, Engine.__dict__["raw_connection"]
    telemetry = instrument()
    assert sqlalchemy.create_engine is not original_create_engine
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert STATE_KEY in engine.dialect.__dict__
    from otel_render.db.instrumentor import SQLAlchemyInstrumentor, current_hooks

    hooks = current_hooks()
    SQLAlchemyInstrumentor().uninstrument()
    for name, listener in hooks._engine_listeners:
        assert not event.contains(Engine, name, listener)
    assert Engine.__dict__["raw_connection"] is original_raw_connection
    assert sqlalchemy.create_engine is original_create_engine
    assert STATE_KEY not in engine.dialect.__dict__ and "do_ping" not in engine.dialect.__dict__
    for method in ("do_execute", "do_executemany", "do_execute_no_params"):
        assert method not in engine.dialect.__dict__
    assert engine.pool._pre_ping is False  # sqlite never got it anyway
    telemetry.exporter.clear()
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 2")
    assert telemetry.spans() == []
    SQLAlchemyInstrumentor().instrument()  # the fixture's uninstrument needs something to undo
