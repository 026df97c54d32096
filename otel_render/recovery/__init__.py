"""Recovery: rules over the package's own meters that act on what goes wrong
on a Render instance (memory pressure, a lost database, a dead scheduler).

Nothing to call for the common case: the configurator starts the manager in
every worker. From code::

    import otel_render
    from otel_render import recovery

    @otel_render.on_memory_pressure
    def drop_caches():
        my_cache.clear()

    recovery.add_rule(recovery.Rule(
        "queue_backlog", "memory.utilization", 0.7, "relieve_memory", cooldown_s=120))

``OTEL_RENDER_RECOVERY=dry-run`` records what it would do without doing it;
``OTEL_RENDER_RECOVERY_DISABLED_ACTIONS`` switches built-in actions off. See
:mod:`otel_render.recovery.manager` for the built-in rules.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

from otel_render import lifecycle
from otel_render.recovery.manager import Outcome, RecoveryManager, RecycleLease, Sources, summary
from otel_render.recovery.memory import on_memory_pressure
from otel_render.recovery.rules import Decision, Rule
from otel_render.version import __version__
from otel_render.web import gunicorn

__all__ = ["Decision", "Outcome", "Rule", "add_rule", "current", "on_memory_pressure", "remove_rule", "summary"]

_logger = logging.getLogger("otel_render.recovery")
_manager: RecoveryManager | None = None
_install_lock = threading.Lock()


def current() -> RecoveryManager | None:
    """The manager of this process (None when recovery is off)."""
    return _manager


def add_rule(rule: Rule) -> None:
    """Add (or replace, by name) a rule. Its ``signal`` is one of
    ``memory.utilization``, ``memory.leak``, ``database.up``,
    ``schedulers.unhealthy``; its ``action`` a built-in one or one registered
    with ``current().add_action``."""
    if _manager is None:
        raise RuntimeError("otel-render recovery is not running (OTEL_RENDER_RECOVERY=off or not configured)")
    _manager.engine.add_rule(rule)


def remove_rule(name: str) -> None:
    if _manager is not None:
        _manager.engine.remove_rule(name)


def install(pipeline: Any) -> RecoveryManager | None:
    """Start the manager (called once by the configurator). Never raises."""
    global _manager
    with _install_lock:
        if _manager is not None:
            return _manager
        settings = pipeline.settings
        if settings.gc_freeze:
            gunicorn.on_master_start(_freeze_before_each_fork)
        if settings.recovery == "off":
            return None
        try:
            from otel_render import endpoints, instance  # pylint: disable=import-outside-toplevel

            installed = endpoints.installed()
            monitor = installed.monitor if installed is not None else None
            sources = Sources(
                view=(monitor.latest_view if monitor is not None else (lambda: None)),
                recycle_lease=lambda: RecycleLease(instance.directory(settings) / "recycle.json"),
            )
            meter = pipeline.meter_provider.get_meter("otel_render.recovery", __version__) if pipeline.meter_provider else None
            manager = RecoveryManager(settings, sources=sources, meter=meter, tracer_provider=pipeline.tracer_provider)
            lifecycle.on_fork_child(manager.reset_after_fork)
            lifecycle.add_loop(lifecycle.BackgroundLoop("recovery", settings.recovery_interval_s, manager.tick))
            _manager = manager
            return manager
        except Exception:  # pylint: disable=broad-except
            _logger.warning("otel-render: could not start the recovery manager; the app runs without it", exc_info=True)
            return None


def _freeze_before_each_fork() -> None:
    """In the gunicorn master: move every object built so far (the --preload
    app) to the permanent generation before each fork, so that collections in
    the workers never write to those objects' pages and un-share them."""
    os.register_at_fork(before=gc.freeze)
