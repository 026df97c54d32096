"""The ``sqlalchemy`` instrumentor (entry point group ``opentelemetry_instrumentor``).

Usage, with no code change::

    opentelemetry-instrument gunicorn app:app

or by hand::

    from otel_render.db.instrumentor import SQLAlchemyInstrumentor
    SQLAlchemyInstrumentor().instrument()
    ...
    SQLAlchemyInstrumentor().uninstrument()  # removes every hook again

It covers SQLAlchemy 1.4, 2.0 and 2.1 (the contrib instrumentation refuses
2.1), every engine including those created before it ran (see
:mod:`otel_render.db.engine`), and async engines through their sync engine.
Besides the hooks it starts two daemon threads per process (the deadline
watchdog and the background probe), registers the ``database`` health check
and the ``databaseStatus``/``activeConnections`` fields of error contexts,
and handles gunicorn's fork: inherited connections are dropped in each worker.

This module imports SQLAlchemy only in :meth:`_instrument`, so the entry point
loads (and reports a missing dependency) without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any

from opentelemetry import metrics, trace

from otel_render import diagnostics, health, lifecycle
from otel_render.config import get_settings
from otel_render.db import probe as db_probe
from otel_render.db import status as db_status
from otel_render.db.deadline import Watchdog
from otel_render.db.pool import create_instruments
from otel_render.instrumentor import RenderInstrumentor
from otel_render.version import __version__
from otel_render.web import gunicorn

_logger = logging.getLogger("otel_render.db")

WATCHDOG_TICK_S = 0.25


class _Runtime:
    """The process's current hooks, and the threads and callbacks that use them.

    Threads and fork callbacks are registered once per process tree (the
    lifecycle module keeps them); they always act on the current hooks, so
    instrumenting again after ``uninstrument`` needs no second set.
    """

    def __init__(self) -> None:
        self.hooks: Any = None
        self.watchdog = Watchdog()
        self.started = False
        self.lock = threading.Lock()

    def start_once(self, probe_interval_s: float) -> None:
        with self.lock:
            if self.started:
                return
            self.started = True
        lifecycle.add_loop(lifecycle.BackgroundLoop("db-deadlines", WATCHDOG_TICK_S, self.watchdog.tick))
        db_probe.install(db_probe.ProbeLoop(self.probe, interval_up_s=probe_interval_s, should_run=self.should_probe))
        lifecycle.on_fork_child(self.after_fork_in_child)
        gunicorn.on_master_start(self.before_workers_fork)
        health.register_check("database", db_status.health_check)
        diagnostics.add_system_state("database", db_status.system_state)

    def probe(self, database: db_status.Database) -> float:
        hooks = self.hooks
        if hooks is None:
            raise LookupError("SQLAlchemy is not instrumented")
        return hooks.probe(database)

    def should_probe(self) -> bool:
        # The gunicorn master serves no request: its probe would only hold a
        # connection open across the workers' fork.
        return self.hooks is not None and gunicorn.identity()[0] != gunicorn.ROLE_MASTER

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.watchdog.reset_after_fork()
        db_status.reset_after_fork()
        if self.hooks is not None:
            self.hooks.after_fork_in_child()

    def before_workers_fork(self) -> None:
        if self.hooks is not None:
            self.hooks.before_workers_fork()


_runtime = _Runtime()


class SQLAlchemyInstrumentor(RenderInstrumentor):
    """Spans, pool meters, deadlines, circuit breaker and status for SQLAlchemy."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("sqlalchemy >= 1.4, < 2.2",)

    def _instrument(self, **kwargs: Any) -> None:
        from otel_render.db.engine import Hooks  # pylint: disable=import-outside-toplevel

        settings = get_settings()
        tracer = trace.get_tracer("otel_render.db", __version__, kwargs.get("tracer_provider"))
        meter = metrics.get_meter("otel_render.db", __version__, kwargs.get("meter_provider"))
        hooks = Hooks(tracer, create_instruments(meter), settings, _runtime.watchdog)
        hooks.install()
        _runtime.hooks = hooks
        _runtime.start_once(settings.db_probe_interval_s)

    def _uninstrument(self, **kwargs: Any) -> None:
        hooks, _runtime.hooks = _runtime.hooks, None
        if hooks is not None:
            hooks.uninstall()


def current_hooks() -> Any:
    """The installed hooks (``otel_render.db.engine.Hooks``), or None."""
    return _runtime.hooks
