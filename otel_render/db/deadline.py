"""Deadlines for everything the app asks of its database: connect, checkout,
pre-ping and statement.

Server-side timeouts (PostgreSQL ``statement_timeout``, MySQL
``max_execution_time``, MariaDB ``max_statement_time``) end a slow statement
cleanly and keep the connection. They cannot fire when the server or the
network hangs, so every blocking step also has a client-side deadline:

- connect: the driver's own connect timeout (libpq ``connect_timeout``,
  PyMySQL/mysqlclient ``connect_timeout``, asyncpg ``timeout``), plus TCP
  keepalives and libpq's ``tcp_user_timeout`` so that a lost network path
  is noticed by the kernel;
- checkout: the pool's wait is capped to the statement deadline;
- pre-ping and statement: the :class:`Watchdog` holds the deadline of every
  connection that is busy. When one passes, it shuts the connection's socket
  down (SQLite: ``interrupt()``), the blocked driver call raises, and
  SQLAlchemy invalidates the connection. The thread that waited gets the error
  and the worker lives on.

Under gunicorn every deadline stays below the worker ``--timeout``, so our
error reaches the app before the arbiter kills a worker that looks stuck.
Everything but :func:`interrupt` and the watchdog thread is pure.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger("otel_render.db")

CONNECT = "connect"
CHECKOUT = "checkout"
PING = "ping"
QUERY = "query"
PHASES = (CONNECT, CHECKOUT, PING, QUERY)

#: TCP keepalive probes for real network loss: the first after 30 s idle,
#: then every 10 s, given up after 3 unanswered (libpq names).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
LIBPQ_DRIVERS = frozenset({"psycopg2", "psycopg", "psycopg_async", "psycopg2cffi"})
MYSQL_DRIVERS = frozenset({"pymysql", "mysqldb"})


@dataclass(frozen=True)
class Deadlines:
    """The deadlines applied to one engine, in seconds (None: not applied)."""

    statement_s: float | None  # server-side statement timeout
    client_s: float | None  # watchdog deadline of a statement (statement_s plus a grace)
    connect_s: float | None
    ping_s: float | None  # pre-ping and probe statement
    capped_by_worker_timeout: bool = False


def grace_s(statement_s: float) -> float:
    """How long after the server's own timeout the client cuts the connection."""
    return max(0.25, min(1.0, statement_s * 0.1))


def effective_deadlines(
    statement_timeout_s: float, connect_timeout_s: float, worker_timeout_s: float | None
) -> Deadlines:
    """The deadlines to apply; 0 turns one off.

    Under gunicorn the statement deadline (and its grace) stays within 80 % of
    the worker timeout, so the app gets our error before the arbiter's SIGKILL.
    """
    capped = False
    statement = statement_timeout_s if statement_timeout_s > 0 else None
    connect = connect_timeout_s if connect_timeout_s > 0 else None
    if worker_timeout_s is not None and worker_timeout_s > 0:
        budget = worker_timeout_s * 0.8
        if statement is not None and statement + grace_s(statement) > budget:
            statement = max(0.5, budget - grace_s(budget))
            capped = True
        if connect is not None and connect > budget:
            connect = max(0.5, budget)
            capped = True
    client = statement + grace_s(statement) if statement is not None else None
    candidates = [value for value in (connect, client) if value is not None]
    ping = min(candidates) if candidates else None
    return Deadlines(statement, client, connect, ping, capped)


def connect_parameters(
    driver: str,
    given: Mapping[str, Any],
    deadlines: Deadlines,
    *,
    keepalives: bool,
    libpq_version: int = 0,
) -> dict[str, Any]:
    """Connection parameters to add for ``driver``; never one the app already set."""
    wanted: dict[str, Any] = {}
    if driver in LIBPQ_DRIVERS:
        if deadlines.connect_s is not None:
            # libpq takes whole seconds and treats anything below 2 as 2.
            wanted["connect_timeout"] = max(2, math.ceil(deadlines.connect_s))
        if keepalives:
            wanted.update(KEEPALIVES)
            if libpq_version >= 120000 and deadlines.client_s is not None:
                wanted["tcp_user_timeout"] = int(max(10.0, deadlines.client_s) * 1000)
    elif driver in MYSQL_DRIVERS:
        if deadlines.connect_s is not None:
            wanted["connect_timeout"] = max(1, math.ceil(deadlines.connect_s))
        if deadlines.client_s is not None:
            wanted["read_timeout"] = max(1, math.ceil(deadlines.client_s))
            wanted["write_timeout"] = max(1, math.ceil(deadlines.client_s))
    elif driver == "asyncpg":
        if deadlines.connect_s is not None:
            wanted["timeout"] = deadlines.connect_s
    return {key: value for key, value in wanted.items() if key not in given}


def server_timeout_statement(dialect_name: str, is_mariadb: bool, statement_s: float | None) -> str | None:
    """The SQL that sets the server-side statement timeout for a new connection."""
    if statement_s is None:
        return None
    milliseconds = max(1, int(statement_s * 1000))
    if dialect_name == "postgresql":
        return f"SET statement_timeout = {milliseconds}"
    if dialect_name in ("mysql", "mariadb"):
        if is_mariadb or dialect_name == "mariadb":
            return f"SET SESSION max_statement_time = {milliseconds / 1000:g}"
        return f"SET SESSION max_execution_time = {milliseconds}"
    return None


# --------------------------------------------------------------------------
# Cutting a connection off
# --------------------------------------------------------------------------


def _fileno(connection: Any) -> int | None:
    """The socket of a DB-API connection (or of the driver connection it wraps)."""
    seen = 0
    while connection is not None and seen < 3:
        fileno = getattr(connection, "fileno", None)
        if callable(fileno):
            try:
                return int(fileno())
            except Exception:  # pylint: disable=broad-except
                return None
        sock = getattr(connection, "_sock", None)  # PyMySQL
        if sock is not None and callable(getattr(sock, "fileno", None)):
            return int(sock.fileno())
        connection = getattr(connection, "driver_connection", None) or getattr(connection, "_connection", None)
        seen += 1
    return None


def is_local(connection: Any) -> bool:
    """Whether cutting ``connection`` only interrupts a statement (SQLite)."""
    return isinstance(connection, sqlite3.Connection)


def interrupt(connection: Any) -> str:
    """Make the driver call blocked on ``connection`` fail now; returns how.

    SQLite is interrupted (the connection stays usable). A network connection
    has its socket shut down in both directions through a duplicate of its
    descriptor: the driver sees the connection closed and raises, and
    SQLAlchemy invalidates it. The driver still closes its own descriptor.
    """
    if is_local(connection):
        connection.interrupt()
        return "interrupt"
    fileno = _fileno(connection)
    if fileno is None or fileno < 0:
        return "unsupported"
    duplicate = os.dup(fileno)
    try:
        with socket.socket(fileno=duplicate) as sock:
            duplicate = -1
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return "already closed"
    finally:
        if duplicate >= 0:
            os.close(duplicate)
    return "shutdown"


# --------------------------------------------------------------------------
# The watchdog
# --------------------------------------------------------------------------


@dataclass(eq=False)
class Armed:
    """One connection with a deadline, as handed out by :meth:`Watchdog.arm`."""

    connection: Any
    phase: str
    deadline: float
    timeout_s: float
    owner: Any = None
    label: str = ""
    fired: bool = False


class Watchdog:
    """Deadlines of busy connections; :meth:`tick` cuts the ones that passed.

    ``arm`` before a blocking driver call, ``disarm`` after it (also on
    error); ``fired`` on the returned :class:`Armed` says whether the deadline
    cut the call. Arming a connection again replaces its previous deadline, and
    :meth:`disarm_connection` (called when a connection goes back to the pool)
    drops any left behind by a call that never returned normally, so a late
    tick can never cut a connection that someone else uses by then.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        cut: Callable[[Any], str] = interrupt,
        on_fire: Callable[[Armed], None] | None = None,
    ) -> None:
        self.clock = clock
        self.cut = cut
        self.on_fire = on_fire
        self._armed: dict[int, Armed] = {}
        self._lock = threading.Lock()

    def arm(self, connection: Any, phase: str, timeout_s: float, owner: Any = None, label: str = "") -> Armed:
        """Watch ``connection`` for ``timeout_s``; ``label`` names it in the log line."""
        armed = Armed(connection, phase, self.clock() + timeout_s, timeout_s, owner, label)
        with self._lock:
            self._armed[id(connection)] = armed
        return armed

    def disarm(self, armed: Armed) -> bool:
        """Stop watching; returns whether the deadline had already cut the call."""
        with self._lock:
            if self._armed.get(id(armed.connection)) is armed:
                del self._armed[id(armed.connection)]
        return armed.fired

    def disarm_connection(self, connection: Any) -> None:
        with self._lock:
            self._armed.pop(id(connection), None)

    def expired(self, now: float) -> list[Armed]:
        """Take out and mark every armed connection whose deadline is past ``now``."""
        with self._lock:
            due = [armed for armed in self._armed.values() if armed.deadline <= now]
            for armed in due:
                armed.fired = True
                del self._armed[id(armed.connection)]
        return due

    def pending(self) -> int:
        with self._lock:
            return len(self._armed)

    def tick(self) -> None:
        for armed in self.expired(self.clock()):
            # Report first, cut second: the woken thread must find the
            # failure already recorded (the circuit open) when it goes on.
            if self.on_fire is not None:
                try:
                    self.on_fire(armed)
                except Exception:  # pylint: disable=broad-except
                    _logger.debug("otel-render: deadline callback failed", exc_info=True)
            try:
                how = self.cut(armed.connection)
            except Exception as exc:  # pylint: disable=broad-except
                how = f"failed ({type(exc).__name__})"
            _logger.warning(
                "otel-render: %s on %s ran past its %.1f s deadline; connection cut (%s)",
                armed.phase,
                armed.label or "a database connection",
                armed.timeout_s,
                how,
            )

    def reset_after_fork(self) -> None:
        """The parent's busy connections are not the child's to cut."""
        self._lock = threading.Lock()
        self._armed = {}
