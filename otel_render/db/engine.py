"""The SQLAlchemy hooks: statement spans, pool meters, the checkout guard
(circuit breaker, deadlines, pre-ping) and fork safety, for every engine.

Every engine is covered, also those created before instrumentation, through
class-level hooks: ``Engine`` events (``handle_error``, ``do_connect``) and a
wrapper around ``Engine.raw_connection``, the one door through which
``Engine.connect``, ``Session`` and the ORM take a connection (1.4, 2.0 and
2.1 alike). An ``AsyncEngine`` goes through its ``sync_engine``. The first
time an engine takes a connection it is *adopted*: its :class:`EngineState` is
attached to its dialect (the object that engine, its connections and its
pools share), the dialect's execute methods are wrapped for the statement
spans (cheaper than ``before/after_cursor_execute`` listeners, which put
every statement of every engine on SQLAlchemy's event path), its pool gets
listeners for the pool meters, and the defaults below are applied and logged
once:

- ``pool_pre_ping`` unless the app passed ``pool_pre_ping`` itself;
- the pool's checkout wait capped to the statement deadline (unless the app
  passed ``pool_timeout``);
- driver connect timeout, TCP keepalives and server-side statement timeout
  (see :mod:`otel_render.db.deadline`);
- the circuit breaker in front of checkouts (see :mod:`otel_render.db.circuit`).

The package never executes a statement of the app's again: a failed
statement fails, and what SQLAlchemy retries (a checkout whose pre-ping found a
dead connection) has not run any of the app's SQL yet.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import wrapt
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from otel_render import request_context
from otel_render.config import Settings
from otel_render.db import deadline as db_deadline
from otel_render.db import status as db_status
from otel_render.db.circuit import ALLOWED, CLOSED, OPEN, CircuitBreaker
from otel_render.db.pool import POOL_NAME, PoolInstruments, add_counts, pool_counts, pool_name_of_url
from otel_render.db.query import describe
from otel_render.db.status import Database, error_name
from otel_render.scrub import default as scrubber
from otel_render.web import gunicorn

_logger = logging.getLogger("otel_render.db")

STATE_KEY = "_otel_render_engine"
CHOSEN_KEY = "_otel_render_chosen"
CHECKOUT_KEY = "otel_render.checked_out_at"
USER_TIMEOUT_KEY = "otel_render.user_statement_timeout"
MAX_CACHED_STATEMENTS = 1024

#: ``db.system.name`` for SQLAlchemy dialect names that differ from it.
DB_SYSTEMS = {"mssql": "microsoft.sql_server", "oracle": "oracle.db"}

#: The dialect methods every statement goes through, and where their ``context`` argument is.
_EXECUTE_METHODS = {"do_execute": 3, "do_executemany": 3, "do_execute_no_params": 2}

_local = threading.local()
"""Per thread: ``trial`` (this checkout is the breaker's trial) and ``probe``."""


class CircuitOpen(Exception):
    """Why a checkout was refused (the ``orig`` of :class:`DatabaseUnavailableError`)."""


class DatabaseUnavailableError(sa_exc.OperationalError):
    """Raised instead of a checkout while the database's circuit is open.

    An ``OperationalError``, like the error of a failed connect, so that code
    handling "database unavailable" handles it too; it is raised at once.
    """

    def __init__(self, message: str) -> None:
        super().__init__(None, None, CircuitOpen(message))


def short_message(error: BaseException) -> str:
    """The first line of an error, scrubbed: drivers put values in later lines (``DETAIL: Key (email)=(...)``)."""
    text = str(error).strip().splitlines()
    return scrubber.text(text[0][:500]) if text else ""


@dataclass(eq=False)
class EngineState:
    """What otel-render keeps per engine (attached to its dialect)."""

    engine: weakref.ref
    dialect: Any
    database: Database
    deadlines: db_deadline.Deadlines
    system: str
    pool_attributes: dict[str, Any]
    base_attributes: dict[str, Any]
    chosen: frozenset[str]
    libpq_version: int = 0
    current_pool: Any = None
    restore: list[tuple[Any, str, Any]] = field(default_factory=list)
    pool_listeners: list[tuple[Any, str, Callable[..., Any]]] = field(default_factory=list)
    statements: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    used: int = 0  # checked out, as the pool events counted them
    pending: int = 0  # checkouts waiting for a connection
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statement(self, statement: str, query_text: bool) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """Span name, span attributes and metric attributes of ``statement`` (cached)."""
        cached = self.statements.get(statement)
        if cached is not None:
            return cached
        info = describe(statement)
        metric_attributes = dict(self.base_attributes)
        if info.operation:
            metric_attributes["db.operation.name"] = info.operation
        if info.collection:
            metric_attributes["db.collection.name"] = info.collection
        target = info.collection or self.base_attributes.get("db.namespace")
        if info.operation:
            name = f"{info.operation} {target}" if target else info.operation
        else:
            name = self.system
        span_attributes = dict(metric_attributes)
        if query_text:
            span_attributes["db.query.text"] = info.text
        if len(self.statements) >= MAX_CACHED_STATEMENTS:
            self.statements.clear()
        cached = (name, span_attributes, metric_attributes)
        self.statements[statement] = cached
        return cached


@dataclass(eq=False)
class _Execution:
    state: EngineState
    span: Any
    started: float
    metric_attributes: dict[str, Any]
    armed: db_deadline.Armed | None


#: Every adopted engine's state, for the meters, the probe and fork handling.
_states: weakref.WeakSet[EngineState] = weakref.WeakSet()
_states_lock = threading.Lock()


def states() -> list[EngineState]:
    with _states_lock:
        return [state for state in _states if state.engine() is not None]


def database_connections(name: str) -> db_status.ConnectionCounts:
    """Connections of every live engine of database ``name``."""
    counts = []
    for state in states():
        engine = state.engine()
        if engine is not None and state.database.name == name and state.current_pool is not None:
            counts.append(pool_counts(engine.pool, counted_used=state.used, pending=state.pending))
    return add_counts(counts)


def _base_engine(engine: Any) -> Any:
    while getattr(engine, "_proxied", None) is not None:  # OptionEngine
        engine = engine._proxied  # pylint: disable=protected-access
    return engine


def _libpq_version(dialect: Any) -> int:
    dbapi = getattr(dialect, "loaded_dbapi", None) or getattr(dialect, "dbapi", None)
    version = getattr(dbapi, "__libpq_version__", None)  # psycopg2
    if version is None:
        pq = getattr(dbapi, "pq", None)  # psycopg 3
        try:
            version = pq.version() if pq is not None else 0
        except Exception:  # pylint: disable=broad-except
            version = 0
    return int(version or 0)


class Hooks:
    """One installation of the hooks (:class:`SQLAlchemyInstrumentor` owns it)."""

    def __init__(
        self,
        tracer: Tracer,
        instruments: PoolInstruments,
        settings: Settings,
        watchdog: db_deadline.Watchdog,
    ) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.settings = settings
        self.watchdog = watchdog
        self.breaker_on = settings.db_circuit_breaker
        self.query_text = settings.db_query_text
        self.installed = False
        self._patched: list[tuple[Any, str, Any]] = []
        self._logged_databases: set[str] = set()
        self._adopt_lock = threading.Lock()
        # Statements are timed around the dialect's execute methods (see
        # _trace_statements), not with Engine events: an Engine event listener
        # sends every connection and statement through SQLAlchemy's slower
        # event path. handle_error and do_connect are dialect events in
        # SQLAlchemy 2 (handle_error runs only when a statement fails).
        self._engine_listeners: list[tuple[str, Callable[..., Any]]] = [
            ("handle_error", self._handle_error),
            ("do_connect", self._do_connect),
        ]
        watchdog.on_fire = self._deadline_passed

    # -- installation ------------------------------------------------------

    def install(self) -> None:
        import sqlalchemy  # pylint: disable=import-outside-toplevel
        import sqlalchemy.engine  # pylint: disable=import-outside-toplevel
        import sqlalchemy.engine.create  # pylint: disable=import-outside-toplevel

        for name, listener in self._engine_listeners:
            event.listen(Engine, name, listener)
        self._patch(Engine, "raw_connection", self._raw_connection)
        for module in (sqlalchemy, sqlalchemy.engine, sqlalchemy.engine.create):
            if hasattr(module, "create_engine"):
                self._patch(module, "create_engine", _remember_choices)
        self.installed = True

    def _patch(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self._patched.append((owner, name, owner.__dict__[name]))
        wrapt.wrap_function_wrapper(owner, name, wrapper)

    def uninstall(self) -> None:
        self.installed = False
        for name, listener in self._engine_listeners:
            if event.contains(Engine, name, listener):
                event.remove(Engine, name, listener)
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()
        for state in states():
            self._release(state)

    def _release(self, state: EngineState) -> None:
        """Undo what adoption did to one engine."""
        for pool, name, listener in state.pool_listeners:
            try:
                engine = state.engine()
                for target in {id(pool): pool, id(getattr(engine, "pool", pool)): getattr(engine, "pool", pool)}.values():
                    if event.contains(target, name, listener):
                        event.remove(target, name, listener)
            except Exception:  # pylint: disable=broad-except
                _logger.debug("otel-render: could not remove a pool listener", exc_info=True)
        state.pool_listeners.clear()
        for target, attribute, value in reversed(state.restore):
            setattr(target, attribute, value)
        state.restore.clear()
        for name in ("do_ping", *_EXECUTE_METHODS):
            state.dialect.__dict__.pop(name, None)
        state.dialect.__dict__.pop(STATE_KEY, None)
        with _states_lock:
            _states.discard(state)

    # -- adoption ----------------------------------------------------------

    def adopt(self, engine: Any) -> EngineState | None:
        """The state of ``engine``, adopting it on first use; None if it cannot be."""
        base = _base_engine(engine)
        dialect = base.dialect
        state = dialect.__dict__.get(STATE_KEY)
        try:
            if state is None:
                with self._adopt_lock:
                    state = dialect.__dict__.get(STATE_KEY)
                    if state is None:
                        state = self._create_state(base)
            if state.current_pool is not base.pool:
                with self._adopt_lock:
                    if state.current_pool is not base.pool:
                        self._configure_pool(state, base.pool)
        except Exception:  # pylint: disable=broad-except
            _logger.warning("otel-render: could not instrument an engine; it runs as it was", exc_info=True)
            return None
        return state

    def _create_state(self, engine: Any) -> EngineState:
        dialect = engine.dialect
        url = engine.url
        name = pool_name_of_url(url)
        backend = url.get_backend_name()
        system = DB_SYSTEMS.get(backend, backend)
        if backend == "mysql" and getattr(dialect, "is_mariadb", False):
            system = "mariadb"
        database = db_status.register(
            Database(
                name=name,
                system=system,
                breaker=CircuitBreaker(half_open_interval_s=self.settings.db_half_open_s),
                connections=lambda: database_connections(name),
            )
        )
        base_attributes: dict[str, Any] = {"db.system.name": system}
        if url.database:
            base_attributes["db.namespace"] = url.database
        if url.host:
            base_attributes["server.address"] = url.host
        if url.port:
            base_attributes["server.port"] = int(url.port)
        state = EngineState(
            engine=weakref.ref(engine),
            dialect=dialect,
            database=database,
            deadlines=self.deadlines(),
            system=system,
            pool_attributes={POOL_NAME: name},
            base_attributes=base_attributes,
            chosen=frozenset(getattr(engine, CHOSEN_KEY, ())),
            libpq_version=_libpq_version(dialect),
        )
        self._guard_ping(state)
        self._trace_statements(state)
        dialect.__dict__[STATE_KEY] = state
        with _states_lock:
            _states.add(state)
        return state

    def deadlines(self) -> db_deadline.Deadlines:
        return db_deadline.effective_deadlines(
            self.settings.db_timeout_s, self.settings.db_connect_timeout_s, gunicorn.worker_timeout_s()
        )

    def _configure_pool(self, state: EngineState, pool: Any) -> None:
        first = state.current_pool is None
        applied = []
        if (
            self.settings.db_pre_ping
            and "pool_pre_ping" not in state.chosen
            and not pool._pre_ping
            and state.system != "sqlite"  # a file has no connection to lose
        ):
            state.restore.append((pool, "_pre_ping", pool._pre_ping))
            pool._pre_ping = True
            applied.append("pre-ping on checkout (OTEL_RENDER_DB_PRE_PING)")
        timeout = getattr(pool, "_timeout", None)
        cap = state.deadlines.client_s
        if cap is not None and isinstance(timeout, (int, float)) and timeout > cap and "pool_timeout" not in state.chosen:
            state.restore.append((pool, "_timeout", timeout))
            pool._timeout = cap
            applied.append(f"checkout wait at most {cap:g} s instead of {timeout:g} s")
        listeners = (
            ("connect", self._on_connect),
            ("checkout", self._on_checkout),
            ("checkin", self._on_checkin),
            ("invalidate", self._on_invalidate),
        )
        for name, method in listeners:
            existing = next((fn for p, n, fn in state.pool_listeners if n == name), None)
            if existing is not None and event.contains(pool, name, existing):
                continue  # carried over by pool.recreate()
            listener = _bind(method, state)
            event.listen(pool, name, listener)
            state.pool_listeners.append((pool, name, listener))
        state.current_pool = pool
        if first:
            # A series from the start, so "no timeouts" reads as 0, not as missing.
            self.instruments.timeouts.add(0, state.pool_attributes)
            self._log_defaults(state, applied)

    def _log_defaults(self, state: EngineState, applied: list[str]) -> None:
        deadlines = state.deadlines
        if deadlines.statement_s is not None:
            where = "server-side and " if self.settings.db_server_timeout and self._server_timeout_sql(state) else ""
            applied.append(
                f"statement deadline {deadlines.statement_s:g} s ({where}client-side at {deadlines.client_s:g} s; "
                "OTEL_RENDER_DB_TIMEOUT_S)"
            )
        parameters = db_deadline.connect_parameters(
            state.dialect.driver, {}, deadlines, keepalives=self.settings.db_keepalives, libpq_version=state.libpq_version
        )
        if "connect_timeout" in parameters or "timeout" in parameters:
            applied.append(f"connect timeout {deadlines.connect_s:g} s (OTEL_RENDER_DB_CONNECT_TIMEOUT_S)")
        if "keepalives" in parameters:
            user_timeout = " and tcp_user_timeout" if "tcp_user_timeout" in parameters else ""
            applied.append(f"TCP keepalives{user_timeout} (OTEL_RENDER_DB_KEEPALIVES)")
        if self.breaker_on:
            applied.append(f"circuit breaker, one trial every {self.settings.db_half_open_s:g} s (OTEL_RENDER_DB_CIRCUIT_BREAKER)")
        if deadlines.capped_by_worker_timeout:
            applied.append("deadlines kept below gunicorn's worker timeout")
        if state.database.name in self._logged_databases:
            return
        self._logged_databases.add(state.database.name)
        _logger.info("otel-render: database %s: %s", state.database.name, "; ".join(applied) or "no defaults applied")

    def _server_timeout_sql(self, state: EngineState) -> str | None:
        if not self.settings.db_server_timeout:
            return None
        return db_deadline.server_timeout_statement(
            state.dialect.name, bool(getattr(state.dialect, "is_mariadb", False)), state.deadlines.statement_s
        )

    def _guard_ping(self, state: EngineState) -> None:
        """Put the pre-ping (and the probe's ping) under the ping deadline."""
        dialect = state.dialect
        original = dialect.do_ping
        watchdog = self.watchdog

        def do_ping(dbapi_connection: Any) -> Any:
            timeout = state.deadlines.ping_s
            if timeout is None:
                return original(dbapi_connection)
            armed = watchdog.arm(dbapi_connection, db_deadline.PING, timeout, state, state.database.name)
            try:
                return original(dbapi_connection)
            finally:
                if watchdog.disarm(armed) and getattr(_local, "trial", False):
                    # This checkout was the breaker's trial and it failed:
                    # do not let it go on to a reconnect that would hang too.
                    _local.trial = False
                    self._breaker_failure(state, trial=True)

        dialect.do_ping = do_ping

    # -- checkout ----------------------------------------------------------

    def _raw_connection(self, wrapped: Callable[..., Any], engine: Any, args: tuple, kwargs: dict) -> Any:
        state = self.adopt(engine) if self.installed else None
        if state is None:
            return wrapped(*args, **kwargs)
        probing = getattr(_local, "probe", False)
        decision = ALLOWED
        if self.breaker_on and not probing:
            decision = state.database.breaker.allow()
            if not decision.allowed:
                raise DatabaseUnavailableError(self._unavailable_message(state, decision.retry_in_s))
        # Counted here, observed when the readers collect (db.client.connection.pending_requests).
        with state.lock:
            state.pending += 1
        started = time.perf_counter()
        previous_trial = getattr(_local, "trial", False)
        _local.trial = decision.trial
        try:
            connection = wrapped(*args, **kwargs)
        except BaseException as error:
            self._checkout_failed(state, error, decision.trial, probing)
            raise
        finally:
            _local.trial = previous_trial
            with state.lock:
                state.pending -= 1
        self.instruments.wait_time.record(time.perf_counter() - started, state.pool_attributes)
        if decision.trial:
            self._database_answered(state)
        return connection

    def _checkout_failed(self, state: EngineState, error: BaseException, trial: bool, probing: bool) -> None:
        if isinstance(error, sa_exc.TimeoutError):
            # The pool is exhausted: a problem of the app's, not the database's.
            self.instruments.timeouts.add(1, state.pool_attributes)
            self.instruments.deadline_exceeded.add(1, {**state.pool_attributes, "phase": db_deadline.CHECKOUT})
            if trial:
                state.database.breaker.abandon_trial()
            return
        if isinstance(error, DatabaseUnavailableError):
            if trial:
                self._breaker_failure(state, trial=True)
            return
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit, gevent.Timeout...
            if trial:
                state.database.breaker.abandon_trial()
            return
        if "timeout expired" in str(error):  # libpq's connect_timeout
            self.instruments.deadline_exceeded.add(1, {**state.pool_attributes, "phase": db_deadline.CONNECT})
        if probing:
            return  # the probe records its own outcome
        self._database_failed(state, error_name(error), trial=trial)

    def _unavailable_message(self, state: EngineState, retry_in_s: float) -> str:
        database = state.database
        opened = database.breaker.opened_at
        since = f" for {time.monotonic() - opened:.1f} s" if opened is not None else ""
        return (
            f"otel-render: database {database.name} is unreachable{since} "
            f"(last error: {database.tracker.last_error or 'unknown'}); failing at once instead of waiting "
            f"(circuit open, next trial in {max(0.0, retry_in_s):.1f} s; OTEL_RENDER_DB_CIRCUIT_BREAKER)"
        )

    def _database_failed(self, state: EngineState, error: str, *, trial: bool = False, breaker: bool = True) -> None:
        database = state.database
        if database.tracker.record_failure(error):
            _logger.warning("otel-render: database %s is down (%s)", database.name, error)
        if breaker:
            self._breaker_failure(state, trial=trial)

    def _breaker_failure(self, state: EngineState, *, trial: bool) -> None:
        if not self.breaker_on:
            return
        if state.database.breaker.record_failure(trial=trial) == OPEN:
            _logger.warning(
                "otel-render: circuit open for database %s: checkouts fail at once, one trial every %g s",
                state.database.name,
                self.settings.db_half_open_s,
            )

    def _database_answered(self, state: EngineState) -> None:
        database = state.database
        database.tracker.record_success()
        if database.breaker.record_success() == CLOSED:
            _logger.warning("otel-render: database %s answers again; circuit closed", database.name)

    def _do_connect(self, dialect: Any, connection_record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        state = dialect.__dict__.get(STATE_KEY)
        if state is None or not self.installed:
            return None
        if (
            self.breaker_on
            and state.database.breaker.state != CLOSED
            and not getattr(_local, "trial", False)
            and not getattr(_local, "probe", False)
        ):
            raise DatabaseUnavailableError(self._unavailable_message(state, 0.0))
        cparams.update(
            db_deadline.connect_parameters(
                dialect.driver,
                cparams,
                state.deadlines,
                keepalives=self.settings.db_keepalives,
                libpq_version=state.libpq_version,
            )
        )
        if connection_record is not None and "statement_timeout" in str(cparams.get("options", "")):
            connection_record.info[USER_TIMEOUT_KEY] = True
        return None

    # -- pool events -------------------------------------------------------

    def _on_connect(self, state: EngineState, dbapi_connection: Any, connection_record: Any) -> None:
        started = getattr(connection_record, "starttime", None)
        if started:
            self.instruments.create_time.record(max(0.0, time.time() - started), state.pool_attributes)
        sql = self._server_timeout_sql(state)
        if sql is None or connection_record.info.get(USER_TIMEOUT_KEY):
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql)
            finally:
                cursor.close()
            dbapi_connection.commit()
        except Exception as error:  # pylint: disable=broad-except
            try:
                dbapi_connection.rollback()
            except Exception:  # pylint: disable=broad-except
                pass
            _log_once(f"server-timeout:{state.database.name}", "otel-render: could not set the server-side statement "
                      f"timeout on {state.database.name} ({error_name(error)}); the client-side deadline still applies")

    def _on_checkout(self, state: EngineState, dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        connection_record.info[CHECKOUT_KEY] = time.perf_counter()
        with state.lock:
            state.used += 1

    def _on_checkin(self, state: EngineState, dbapi_connection: Any, connection_record: Any) -> None:
        if dbapi_connection is not None:
            self.watchdog.disarm_connection(dbapi_connection)
        started = connection_record.info.pop(CHECKOUT_KEY, None) if connection_record is not None else None
        if started is not None:
            self.instruments.use_time.record(time.perf_counter() - started, state.pool_attributes)
            with state.lock:
                state.used = max(0, state.used - 1)

    def _on_invalidate(self, state: EngineState, dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
        if dbapi_connection is not None:
            self.watchdog.disarm_connection(dbapi_connection)

    # -- statements --------------------------------------------------------

    def _trace_statements(self, state: EngineState) -> None:
        """Wrap the dialect's ``do_execute``, ``do_executemany`` and
        ``do_execute_no_params`` (every statement SQLAlchemy runs goes through
        one of them): a span, the query deadline and the duration meter around
        the driver call. A failure is handled by ``handle_error``."""
        dialect = state.dialect
        for name, context_index in _EXECUTE_METHODS.items():
            dialect.__dict__[name] = self._traced(state, getattr(dialect, name), context_index)

    def _traced(self, state: EngineState, original: Callable[..., Any], context_index: int) -> Callable[..., Any]:
        hooks = self

        def traced(*args: Any, **kwargs: Any) -> Any:
            context = kwargs.get("context") if len(args) <= context_index else args[context_index]
            if context is None or not hooks.installed or _dialect_setup(context):
                return original(*args, **kwargs)
            try:
                hooks._statement_started(state, args[0], args[1], context)
            except Exception:  # pylint: disable=broad-except
                _log_once("statement-start", "otel-render: could not trace a statement; it runs untraced", exc_info=True)
                return original(*args, **kwargs)
            result = original(*args, **kwargs)
            try:
                hooks._statement_finished(context)
            except Exception:  # pylint: disable=broad-except
                _log_once("statement-end", "otel-render: could not end a statement's span", exc_info=True)
            return result

        traced.__name__ = f"otel_render_{getattr(original, '__name__', 'execute')}"
        return traced

    def _statement_started(self, state: EngineState, cursor: Any, statement: str, context: Any) -> None:
        name, span_attributes, metric_attributes = state.statement(statement, self.query_text)
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=span_attributes)
        armed = None
        client_s = state.deadlines.client_s
        if client_s is not None:
            connection = getattr(cursor, "connection", None)
            if connection is not None:
                armed = self.watchdog.arm(connection, db_deadline.QUERY, client_s, state, state.database.name)
        context._otel_render = _Execution(state, span, time.perf_counter(), metric_attributes, armed)

    def _statement_finished(self, context: Any) -> None:
        execution = getattr(context, "_otel_render", None)
        if execution is None:
            return
        context._otel_render = None
        if execution.armed is not None:
            self.watchdog.disarm(execution.armed)
        duration = time.perf_counter() - execution.started
        execution.span.end()
        self.instruments.operation_duration.record(duration, execution.metric_attributes)
        request_context.add_db_query(duration)
        execution.state.database.tracker.record_success()

    def _handle_error(self, exception_context: Any) -> None:
        context = exception_context.execution_context
        execution = getattr(context, "_otel_render", None) if context is not None else None
        error = exception_context.original_exception
        if execution is None:
            return
        context._otel_render = None
        fired = self.watchdog.disarm(execution.armed) if execution.armed is not None else False
        duration = time.perf_counter() - execution.started
        kind = error_name(error)
        span = execution.span
        span.set_attribute("error.type", kind)
        code = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
        if code:
            span.set_attribute("db.response.status_code", str(code))
        if fired:
            span.set_attribute("otel_render.db.deadline_exceeded", db_deadline.QUERY)
        message = short_message(error)
        span.add_event("exception", {"exception.type": kind, "exception.message": message})
        span.set_status(Status(StatusCode.ERROR, message[:200]))
        span.end()
        self.instruments.operation_duration.record(duration, {**execution.metric_attributes, "error.type": kind})
        request_context.add_db_query(duration)
        if exception_context.is_disconnect and not fired:
            # The connection broke under a statement: the database may be
            # going away. Reported at once; the breaker waits for a failed
            # reconnect (or a deadline), so one dropped connection does not
            # turn traffic away.
            self._database_failed(execution.state, kind, breaker=False)

    # -- deadlines ---------------------------------------------------------

    def _deadline_passed(self, armed: db_deadline.Armed) -> None:
        """Watchdog thread, just before it cuts the connection."""
        state = armed.owner
        if not isinstance(state, EngineState):
            return
        self.instruments.deadline_exceeded.add(1, {**state.pool_attributes, "phase": armed.phase})
        if db_deadline.is_local(armed.connection):
            return  # SQLite: a slow statement, not an unreachable database
        self._database_failed(state, f"deadline exceeded ({armed.phase})")

    # -- probe -------------------------------------------------------------

    def probe(self, database: Database) -> float:
        """One cheap round trip to ``database`` through one of its engines; its latency."""
        for state in states():
            engine = state.engine()
            if engine is None or state.database is not database:
                continue
            _local.probe = True
            try:
                raw = engine.raw_connection()
            finally:
                _local.probe = False
            try:
                dbapi_connection = getattr(raw, "dbapi_connection", None) or raw.connection
                started = time.perf_counter()
                state.dialect.do_ping(dbapi_connection)
                return time.perf_counter() - started
            except BaseException:
                raw.invalidate()
                raise
            finally:
                raw.close()
        raise LookupError(f"no live engine for {database.name}")

    # -- processes ---------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """Drop the parent's connections (without closing them), refresh deadlines."""
        self._adopt_lock = threading.Lock()
        for state in states():
            state.lock = threading.Lock()
            state.used = 0
            state.pending = 0
            state.deadlines = self.deadlines()
            engine = state.engine()
            if engine is None or not self.settings.db_fork_safety:
                continue
            try:
                engine.dispose(close=False)
            except Exception:  # pylint: disable=broad-except
                _logger.warning("otel-render: could not drop inherited connections of %s", state.database.name, exc_info=True)

    def before_workers_fork(self) -> None:
        """gunicorn master: close its own connections before the workers are forked."""
        for state in states():
            state.deadlines = self.deadlines()
            engine = state.engine()
            if engine is None or not self.settings.db_fork_safety:
                continue
            try:
                engine.dispose()
            except Exception:  # pylint: disable=broad-except
                _logger.debug("otel-render: could not dispose %s in the master", state.database.name, exc_info=True)


def _dialect_setup(context: Any) -> bool:
    """Whether a statement is SQLAlchemy's own setup on an engine's first
    connect (server version, default schema...): it runs on a connection made
    with revalidation off, and with events off, so it was never traced."""
    # Connection(..., _allow_revalidate=False) keeps it as the private __can_reconnect
    # (1.4 to 2.1); only that first-connect connection starts with it off.
    return getattr(getattr(context, "root_connection", None), "_Connection__can_reconnect", True) is False


def _bind(method: Callable[..., Any], state: EngineState) -> Callable[..., Any]:
    def listener(*args: Any) -> Any:
        try:
            return method(state, *args)
        except Exception:  # pylint: disable=broad-except
            _log_once(f"listener:{method.__name__}", f"otel-render: database hook {method.__name__} failed", exc_info=True)
            return None

    listener.__name__ = f"otel_render_{method.__name__.lstrip('_')}"
    return listener


def _remember_choices(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """Around ``create_engine``: note which pool options the app chose itself."""
    engine = wrapped(*args, **kwargs)
    try:
        setattr(engine, CHOSEN_KEY, frozenset(key for key in ("pool_pre_ping", "pool_timeout") if key in kwargs))
    except Exception:  # pylint: disable=broad-except
        pass
    return engine


_logged: set[str] = set()


def _log_once(key: str, message: str, **kwargs: Any) -> None:
    if key in _logged:
        return
    _logged.add(key)
    _logger.warning(message, **kwargs)
