"""Deadlines: what is applied, and the watchdog that cuts a hung connection."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest

from otel_render.db.deadline import (
    KEEPALIVES,
    PING,
    QUERY,
    Deadlines,
    Watchdog,
    connect_parameters,
    effective_deadlines,
    interrupt,
    server_timeout_statement,
)


def test_defaults_outside_gunicorn():
    deadlines = effective_deadlines(30.0, 5.0, None)
    assert deadlines.statement_s == 30.0
    assert deadlines.client_s == 31.0  # the server's own timeout fires first
    assert deadlines.connect_s == 5.0
    assert deadlines.ping_s == 5.0
    assert not deadlines.capped_by_worker_timeout


@pytest.mark.parametrize("worker_timeout", [30.0, 10.0, 3.0])
def test_under_gunicorn_the_client_deadline_stays_below_the_worker_timeout(worker_timeout):
    deadlines = effective_deadlines(30.0, 5.0, worker_timeout)
    assert deadlines.capped_by_worker_timeout
    assert deadlines.client_s < worker_timeout
    assert deadlines.ping_s < worker_timeout


def test_a_short_deadline_is_not_touched_by_a_long_worker_timeout():
    deadlines = effective_deadlines(5.0, 5.0, 30.0)
    assert (deadlines.statement_s, deadlines.client_s, deadlines.capped_by_worker_timeout) == (5.0, 5.5, False)


def test_zero_turns_deadlines_off():
    deadlines = effective_deadlines(0, 0, None)
    assert deadlines == Deadlines(None, None, None, None, False)


def test_libpq_parameters_and_the_apps_own_win():
    deadlines = effective_deadlines(30.0, 5.0, None)
    added = connect_parameters("psycopg2", {}, deadlines, keepalives=True, libpq_version=160000)
    assert added == {"connect_timeout": 5, **KEEPALIVES, "tcp_user_timeout": 31000}
    kept = connect_parameters("psycopg", {"connect_timeout": 1, "keepalives": 0}, deadlines, keepalives=True)
    assert "connect_timeout" not in kept and "keepalives" not in kept
    assert "tcp_user_timeout" not in kept  # unknown libpq version: an unknown option would refuse to connect
    assert connect_parameters("psycopg2", {}, effective_deadlines(30, 0.5, None), keepalives=False) == {"connect_timeout": 2}


def test_other_drivers():
    deadlines = effective_deadlines(10.0, 3.0, None)
    assert connect_parameters("pymysql", {}, deadlines, keepalives=True) == {
        "connect_timeout": 3,
        "read_timeout": 11,
        "write_timeout": 11,
    }
    assert connect_parameters("asyncpg", {}, deadlines, keepalives=True) == {"timeout": 3.0}
    assert connect_parameters("pysqlite", {}, deadlines, keepalives=True) == {}


def test_server_side_statements():
    assert server_timeout_statement("postgresql", False, 30.0) == "SET statement_timeout = 30000"
    assert server_timeout_statement("mysql", False, 2.5) == "SET SESSION max_execution_time = 2500"
    assert server_timeout_statement("mysql", True, 2.5) == "SET SESSION max_statement_time = 2.5"
    assert server_timeout_statement("sqlite", False, 30.0) is None
    assert server_timeout_statement("postgresql", False, None) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_cuts_only_what_passed_its_deadline_and_reports_before_cutting():
    clock = Clock()
    events = []
    watchdog = Watchdog(clock=clock, cut=lambda connection: events.append(("cut", connection)) or "shutdown")
    watchdog.on_fire = lambda armed: events.append(("fire", armed.connection))
    slow, fast = object(), object()
    armed_slow = watchdog.arm(slow, QUERY, 5.0)
    armed_fast = watchdog.arm(fast, PING, 1.0)
    clock.now = 0.9
    watchdog.tick()
    assert events == []
    assert watchdog.disarm(armed_fast) is False
    clock.now = 5.0
    watchdog.tick()
    assert events == [("fire", slow), ("cut", slow)]
    assert watchdog.disarm(armed_slow) is True
    assert watchdog.pending() == 0


def test_rearming_replaces_and_a_returned_connection_is_never_cut_later():
    clock = Clock()
    cut = []
    watchdog = Watchdog(clock=clock, cut=lambda connection: cut.append(connection) or "shutdown")
    connection = object()
    first = watchdog.arm(connection, QUERY, 1.0)
    watchdog.arm(connection, QUERY, 10.0)  # a later statement on the same connection
    clock.now = 2.0
    watchdog.tick()
    assert cut == [] and first.fired is False
    watchdog.disarm_connection(connection)  # checked in to the pool
    clock.now = 20.0
    watchdog.tick()
    assert cut == []


def test_interrupt_shuts_a_socket_down_so_a_blocked_reader_wakes():
    left, right = socket.socketpair()

    class Connection:
        def fileno(self) -> int:
            return left.fileno()

    received = []
    reader = threading.Thread(target=lambda: received.append(left.recv(10)))
    reader.start()
    time.sleep(0.05)
    assert interrupt(Connection()) == "shutdown"
    reader.join(timeout=5)
    assert not reader.is_alive() and received == [b""]
    assert left.fileno() >= 0  # the driver's own descriptor is still its to close
    left.close()
    right.close()


def test_interrupt_stops_a_running_sqlite_statement_and_keeps_the_connection():
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    timer = threading.Timer(0.2, interrupt, [connection])
    timer.start()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        connection.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        ).fetchall()
    assert connection.execute("SELECT 1").fetchone() == (1,)


def test_interrupt_of_something_without_a_socket_says_so():
    assert interrupt(object()) == "unsupported"
