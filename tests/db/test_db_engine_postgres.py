"""The instrumentor against a real PostgreSQL: conventions, secrets, pool
meters, the defaults it applies, deadlines, circuit breaker and fork safety."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import sqlalchemy
from sqlalchemy.exc import IntegrityError, OperationalError

from otel_render import health
from otel_render.db import status as db_status
from otel_render.db.circuit import CLOSED, OPEN
from otel_render.db.engine import DatabaseUnavailableError

#: psycopg 3 (and its async variant) has a dialect from SQLAlchemy 2.0 on; the
#: suite runs on 2.1, ``make test-sqlalchemy-versions`` also on 1.4 and 2.0.
SQLALCHEMY_1 = sqlalchemy.__version__.startswith("1.")
DRIVERS = ["psycopg2"] if SQLALCHEMY_1 else ["psycopg2", "psycopg"]

PASSWORD = "s3cret-pw"
LITERAL_SECRET = "literal-secret-4711"
BOUND_SECRET = "bound-secret-0815"


def every_attribute_value(telemetry) -> str:
    values = [json.dumps(dict(span.attributes), default=str) for span in telemetry.spans()]
    values += [json.dumps([dict(e.attributes) for e in span.events], default=str) for span in telemetry.spans()]
    values += [span.status.description or "" for span in telemetry.spans()]
    data = telemetry.reader.get_metrics_data()
    values.append(data.to_json() if data else "")
    return "\n".join(values)


@pytest.fixture
def table(postgres):
    postgres.psql(
        "DROP TABLE IF EXISTS accounts; CREATE TABLE accounts (id serial PRIMARY KEY, email text UNIQUE, note text);"
        "GRANT ALL ON accounts TO app; GRANT ALL ON SEQUENCE accounts_id_seq TO app",
        dbname="app",
    )
    return "accounts"


@pytest.mark.parametrize("driver", DRIVERS)
def test_spans_follow_the_conventions_and_carry_no_secret(instrument, postgres, table, driver):
    telemetry = instrument()
    engine = sqlalchemy.create_engine(postgres.url(driver=driver))
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(f"INSERT INTO accounts (email, note) VALUES (:email, '{LITERAL_SECRET}')"),
            {"email": BOUND_SECRET},
        )
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(sqlalchemy.text("INSERT INTO accounts (email) VALUES (:email)"), {"email": BOUND_SECRET})
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT note FROM accounts WHERE email = :e"), {"e": BOUND_SECRET}).scalar()

    select = telemetry.spans("SELECT accounts")[0]
    assert select.kind.name == "CLIENT"
    assert {key: select.attributes[key] for key in select.attributes if key != "db.query.text"} == {
        "db.system.name": "postgresql",
        "db.namespace": "app",
        "db.operation.name": "SELECT",
        "db.collection.name": "accounts",
        "server.address": "127.0.0.1",
        "server.port": postgres.port,
    }
    assert select.attributes["db.query.text"] == "SELECT note FROM accounts WHERE email = %(e)s"
    failed = [span for span in telemetry.spans("INSERT accounts") if span.status.status_code.name == "ERROR"]
    assert len(failed) == 1
    assert failed[0].attributes["error.type"].endswith("UniqueViolation")
    assert failed[0].attributes["db.response.status_code"] == "23505"
    assert telemetry.value(
        "db.client.operation.duration", **{"db.operation.name": "INSERT", "error.type": failed[0].attributes["error.type"]}
    ) == 1
    exported = every_attribute_value(telemetry)
    for secret in (PASSWORD, LITERAL_SECRET, BOUND_SECRET):
        assert secret not in exported
    engine.dispose()


def test_pool_meters(instrument, postgres):
    telemetry = instrument()
    engine = sqlalchemy.create_engine(postgres.url(), pool_size=1, max_overflow=0, pool_timeout=0.3)
    pool = {"db.client.connection.pool.name": f"postgresql://127.0.0.1:{postgres.port}/app"}
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
        assert telemetry.value("db.client.connection.count", **pool, **{"db.client.connection.state": "used"}) == 1
        assert telemetry.value("db.client.connection.count", **pool, **{"db.client.connection.state": "idle"}) == 0
        assert telemetry.value("db.client.connection.timeouts", **pool) == 0
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            engine.connect()  # pool_timeout chosen by the app: 0.3 s
    assert telemetry.value("db.client.connection.count", **pool, **{"db.client.connection.state": "used"}) == 0
    assert telemetry.value("db.client.connection.count", **pool, **{"db.client.connection.state": "idle"}) == 1
    assert telemetry.value("db.client.connection.max", **pool) == 1
    assert telemetry.value("db.client.connection.timeouts", **pool) == 1
    assert telemetry.value("db.client.connection.pending_requests", **pool) == 0
    assert telemetry.value("db.client.connection.create_time", **pool) == 1
    assert telemetry.value("db.client.connection.wait_time", **pool) == 1
    assert telemetry.value("db.client.connection.use_time", **pool) == 1
    assert telemetry.value("otel_render.db.status", **pool) == 1
    assert telemetry.value("otel_render.db.circuit.state", **pool, state="closed") == 1
    assert "s3cret" not in json.dumps([attrs for attrs, _ in telemetry.points("db.client.connection.count")])
    engine.dispose()


def test_defaults_applied_to_a_postgres_engine(instrument, postgres, caplog):
    instrument(OTEL_RENDER_DB_TIMEOUT_S="7", OTEL_RENDER_DB_CONNECT_TIMEOUT_S="4")
    engine = sqlalchemy.create_engine(postgres.url())
    with caplog.at_level("INFO", logger="otel_render.db"), engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "7s"
        parameters = connection.connection.dbapi_connection.get_dsn_parameters()
    assert engine.pool._pre_ping is True
    assert engine.pool._timeout == 7.7  # checkout wait capped to the client deadline
    assert parameters["connect_timeout"] == "4"
    assert (parameters["keepalives"], parameters["keepalives_idle"]) == ("1", "30")
    assert parameters["tcp_user_timeout"] == "10000"
    lines = [record.getMessage() for record in caplog.records if "pre-ping" in record.getMessage()]
    assert len(lines) == 1 and "OTEL_RENDER_DB_PRE_PING" in lines[0] and PASSWORD not in lines[0]
    engine.dispose()


def test_what_the_app_chose_is_kept_and_every_default_can_be_switched_off(instrument, postgres):
    instrument(OTEL_RENDER_DB_KEEPALIVES="false", OTEL_RENDER_DB_SERVER_TIMEOUT="false")
    chosen = sqlalchemy.create_engine(
        postgres.url(),
        pool_pre_ping=False,
        pool_timeout=60,
        connect_args={"connect_timeout": 9, "options": "-c statement_timeout=1234"},
    )
    with chosen.connect() as connection:
        assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "1234ms"
        parameters = connection.connection.dbapi_connection.get_dsn_parameters()
    assert chosen.pool._pre_ping is False and chosen.pool._timeout == 60
    assert parameters["connect_timeout"] == "9" and "keepalives" not in parameters
    chosen.dispose()


def test_a_slow_statement_is_cancelled_by_the_server_and_the_circuit_stays_closed(instrument, postgres):
    telemetry = instrument(OTEL_RENDER_DB_TIMEOUT_S="1")
    engine = sqlalchemy.create_engine(postgres.url())
    started = time.monotonic()
    with engine.connect() as connection, pytest.raises(OperationalError, match="statement timeout"):
        connection.exec_driver_sql("SELECT pg_sleep(30)")
    assert time.monotonic() - started < 15
    (database,) = db_status.databases()
    assert database.breaker.state == CLOSED
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    assert telemetry.points("otel_render.db.deadline.exceeded") == []  # the server's timeout, not ours
    engine.dispose()


def test_a_hung_statement_is_cut_by_the_client_deadline_then_the_circuit_fails_fast_and_recovers(
    instrument, postgres, tcp_proxy_factory
):
    telemetry = instrument(OTEL_RENDER_DB_TIMEOUT_S="1", OTEL_RENDER_DB_CONNECT_TIMEOUT_S="2")
    proxy = tcp_proxy_factory("127.0.0.1", postgres.port)
    engine = sqlalchemy.create_engine(postgres.url().replace(f":{postgres.port}/", f":{proxy.port}/"))
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            connection.exec_driver_sql("SELECT 1")
        elapsed = time.monotonic() - started
        assert raised.value.connection_invalidated
    assert elapsed < 10  # deadline 1 s + 0.25 s grace; generous for a loaded machine
    (database,) = db_status.databases()
    assert database.breaker.state == OPEN and database.tracker.status == db_status.DOWN
    assert database.tracker.last_error == "deadline exceeded (query)"
    assert telemetry.value("otel_render.db.deadline.exceeded", phase="query") == 1
    assert health.registered_checks()["database"](time.time()).status == health.DEGRADED

    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="unreachable"):
        engine.connect()
    assert time.monotonic() - started < 0.5  # at once: no socket touched

    proxy.forward()
    deadline = time.monotonic() + 15
    while True:
        try:
            with engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT 1").scalar() == 1
            break
        except OperationalError:
            assert time.monotonic() < deadline, "no recovery after the proxy forwarded again"
            time.sleep(0.05)
    assert database.breaker.state == CLOSED
    engine.dispose()


def test_after_an_idle_restart_a_warm_pool_loses_no_statement(instrument, postgres):
    instrument()
    engine = sqlalchemy.create_engine(postgres.url(), pool_size=3)
    connections = [engine.connect() for _ in range(3)]
    for connection in connections:
        connection.exec_driver_sql("SELECT 1")
        connection.close()
    postgres.restart()
    for _ in range(10):
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


def test_a_stopped_server_is_reported_down_and_service_resumes_after_it_starts(instrument, postgres):
    instrument(OTEL_RENDER_DB_HALF_OPEN_S="0.5")
    engine = sqlalchemy.create_engine(postgres.url())
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    postgres.stop()
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    (status,) = db_status.snapshot()
    assert (status.status, status.circuit) == ("down", "open")
    with pytest.raises(DatabaseUnavailableError):
        engine.connect()
    postgres.start()
    started = time.monotonic()
    while True:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            break
        except OperationalError:
            time.sleep(0.02)
    assert time.monotonic() - started < 5 * 0.5 + 2  # a small multiple of the half-open interval
    assert db_status.snapshot()[0].status == "up"
    engine.dispose()


def test_a_statement_that_failed_is_never_run_again(instrument, postgres, table):
    instrument()
    engine = sqlalchemy.create_engine(postgres.url(), pool_pre_ping=False)
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    postgres.psql(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(OperationalError) as raised, engine.begin() as connection:
        connection.execute(sqlalchemy.text("INSERT INTO accounts (email) VALUES ('once')"))
    assert raised.value.connection_invalidated
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM accounts").scalar() == 0
    engine.dispose()


def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_alone(instrument, postgres):
    instrument()
    from otel_render.db.instrumentor import _runtime

    engine = sqlalchemy.create_engine(postgres.url())
    with engine.connect() as connection:
        parent_pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            _runtime.after_fork_in_child()  # what lifecycle's fork hook runs
            with engine.connect() as connection:
                os.write(write_end, str(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_backend = int(os.read(read_end, 100) or b"0")
    os.waitpid(child, 0)
    os.close(read_end)
    assert child_backend not in (0, parent_pid)
    with engine.connect() as connection:  # the child did not close the parent's socket
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == parent_pid
    engine.dispose()


@pytest.mark.skipif(SQLALCHEMY_1, reason="no async psycopg dialect before SQLAlchemy 2.0")
def test_an_async_engine_is_covered_through_its_sync_engine(instrument, postgres):
    from sqlalchemy.ext.asyncio import create_async_engine

    telemetry = instrument()

    async def run() -> int:
        engine = create_async_engine(postgres.url(driver="psycopg_async"))
        async with engine.connect() as connection:
            value = (await connection.exec_driver_sql("SELECT 41 + 1")).scalar()
        await engine.dispose()
        return value

    assert asyncio.run(run()) == 42
    (span,) = telemetry.spans("SELECT app")
    assert span.attributes["db.query.text"] == "SELECT ? + ?"
    assert telemetry.value("db.client.connection.wait_time") == 1
