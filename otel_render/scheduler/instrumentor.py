"""OpenTelemetry instrumentation for APScheduler 3.x, with supervision.

Usage, with no code change (entry point ``apscheduler`` of the
``opentelemetry_instrumentor`` group)::

    opentelemetry-instrument gunicorn app:app

or by hand::

    from otel_render.scheduler.instrumentor import APSchedulerInstrumentor

    APSchedulerInstrumentor().instrument()   # before the app starts its schedulers

What it changes in APScheduler (all restored by ``uninstrument()``):

- the executors' ``run_job`` / ``run_coroutine_job``: each run becomes a span
  and meter points (:mod:`otel_render.scheduler.runs`); thread pools, the
  asyncio executor, the debug executor, and gevent/tornado/twisted when used;
- ``start`` of every scheduler: the supervisor decides whether this process
  runs it now, later (stagger) or not at all (another process is the runner);
  a ``BackgroundScheduler`` that waits is started without its thread;
- ``_process_jobs``: the gate that keeps a waiting scheduler from running jobs
  and records progress for a later handover;
- ``_main_loop``: remembers the exception that killed a scheduler's thread;
- ``shutdown``: works on a scheduler held without a thread, and is a no-op
  after the graceful stop at exit shut the scheduler down (an app's own
  ``atexit`` shutdown comes later and must not raise).

It also registers the ``schedulers`` health check, the supervisor's
background loop, the graceful stop at exit and the after-fork reset. Where
jobs run under gunicorn is explained in :mod:`otel_render.scheduler.supervisor`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.utils import unwrap

from otel_render import health, lifecycle
from otel_render.config import get_settings
from otel_render.instrumentor import RenderInstrumentor
from otel_render.scheduler.control import APS_STOPPED, KIND_BACKGROUND, start_without_thread
from otel_render.scheduler.health import evaluate
from otel_render.scheduler.policy import supervisor_interval
from otel_render.scheduler.runs import JobRunTracer, RunRegistry
from otel_render.scheduler.shutdown import GracefulStop, register_exit_hook
from otel_render.scheduler.supervisor import Supervisor, gunicorn_role
from otel_render.version import __version__
from otel_render.web import gunicorn

_logger = logging.getLogger("otel_render.scheduler")

_INSTRUMENTS = ("apscheduler >= 3.9, < 4",)

# Executor modules that call run_job / run_coroutine_job by their own name.
_ALWAYS_PATCHED = (
    "apscheduler.executors.base",
    "apscheduler.executors.pool",
    "apscheduler.executors.debug",
    "apscheduler.executors.asyncio",
)
_PATCHED_WHEN_IMPORTED = (
    "apscheduler.executors.gevent",
    "apscheduler.executors.tornado",
    "apscheduler.executors.twisted",
)


@dataclass
class _Active:
    """The parts of the current instrumentation (one per process)."""

    supervisor: Supervisor
    tracer: JobRunTracer
    stop: GracefulStop
    loop: lifecycle.BackgroundLoop | None
    original_run_job: Callable
    original_run_coroutine_job: Callable
    patched_modules: list[tuple[Any, str, Any]]


_active: _Active | None = None
_hooks_installed = False
# APScheduler's own run_job and run_coroutine_job, saved at the first instrument().
_ORIGINALS: dict[str, Callable] = {}


# --------------------------------------------------------------------------
# The functions executors call. Plain module-level functions (not proxies), so
# that a ProcessPoolExecutor can still pickle them by reference; in a process
# where otel-render is not instrumented they call APScheduler's own.
# --------------------------------------------------------------------------


def traced_run_job(job: Any, jobstore_alias: str, run_times: list, logger_name: str) -> list:
    active = _active
    if active is None:
        from apscheduler.executors import base  # pylint: disable=import-outside-toplevel

        original = base.run_job if base.run_job is not traced_run_job else _ORIGINALS["run_job"]
        return original(job, jobstore_alias, run_times, logger_name)
    return active.tracer.run(job, jobstore_alias, run_times, logger_name, active.original_run_job)


async def traced_run_coroutine_job(job: Any, jobstore_alias: str, run_times: list, logger_name: str) -> list:
    active = _active
    if active is None:
        from apscheduler.executors import base  # pylint: disable=import-outside-toplevel

        original = (
            base.run_coroutine_job
            if base.run_coroutine_job is not traced_run_coroutine_job
            else _ORIGINALS["run_coroutine_job"]
        )
        return await original(job, jobstore_alias, run_times, logger_name)
    return await active.tracer.run_coroutine(
        job, jobstore_alias, run_times, logger_name, active.original_run_coroutine_job
    )


# --------------------------------------------------------------------------
# Wrappers of scheduler methods
# --------------------------------------------------------------------------


def _base_start(wrapped: Callable, scheduler: Any, args: tuple, kwargs: dict) -> Any:
    active = _active
    if active is None or scheduler.state != APS_STOPPED:
        return wrapped(*args, **kwargs)
    control = active.supervisor.adopt(scheduler)
    if control.kind == KIND_BACKGROUND:
        return wrapped(*args, **kwargs)  # decided in _background_start
    # BlockingScheduler, AsyncIOScheduler and the others process jobs in the
    # app's thread or event loop: they start either way, and the gate keeps
    # one that waits (standby, stagger) from running jobs.
    live = active.supervisor.decide_start(control)
    result = wrapped(*args, **kwargs)
    if live:
        active.supervisor.after_live_start(control)
    return result


def _background_start(wrapped: Callable, scheduler: Any, args: tuple, kwargs: dict) -> Any:
    active = _active
    if active is None or scheduler.state != APS_STOPPED:
        return wrapped(*args, **kwargs)
    control = active.supervisor.adopt(scheduler)
    if active.supervisor.decide_start(control):
        result = wrapped(*args, **kwargs)
        active.supervisor.after_live_start(control)
        return result
    start_without_thread(scheduler, *args, **kwargs)
    return None


def _already_shut_down_at_exit(scheduler: Any) -> bool:
    control = scheduler.__dict__.get("_otel_render_control")
    return control is not None and control.shut_down_at_exit and scheduler.state == APS_STOPPED


def _background_shutdown(wrapped: Callable, scheduler: Any, args: tuple, kwargs: dict) -> Any:
    if _already_shut_down_at_exit(scheduler):
        return None
    if "_thread" in scheduler.__dict__:
        return wrapped(*args, **kwargs)
    # Started without a thread (standby): the original would join a thread
    # that does not exist.
    from apscheduler.schedulers.blocking import BlockingScheduler  # pylint: disable=import-outside-toplevel

    return BlockingScheduler.shutdown(scheduler, *args, **kwargs)


def _base_shutdown(wrapped: Callable, scheduler: Any, args: tuple, kwargs: dict) -> Any:
    if _already_shut_down_at_exit(scheduler):
        return None
    result = wrapped(*args, **kwargs)
    active = _active
    control = scheduler.__dict__.get("_otel_render_control")
    if active is not None and control is not None:
        active.supervisor.ledger.forget(control.name)
    return result


def _process_jobs(wrapped: Callable, scheduler: Any, args: tuple, kwargs: dict) -> Any:
    active = _active
    control = scheduler.__dict__.get("_otel_render_control") if active is not None else None
    if control is None:
        return wrapped(*args, **kwargs)
    if not active.supervisor.gate(control):
        return None  # wait until woken: another process runs these jobs, or not yet
    wait_seconds = wrapped(*args, **kwargs)
    try:
        active.supervisor.after_processing(control, wait_seconds)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: scheduler bookkeeping failed", exc_info=True)
    return wait_seconds


def _main_loop(wrapped: Callable, scheduler: Any, args: tuple, kwargs: dict) -> Any:
    try:
        return wrapped(*args, **kwargs)
    except Exception as exc:
        active = _active
        if active is not None:
            try:
                active.supervisor.main_loop_died(scheduler, exc)
            except Exception:  # pylint: disable=broad-except
                _logger.debug("otel-render: could not record a scheduler failure", exc_info=True)
        raise


# --------------------------------------------------------------------------
# Health, meters and hooks that outlive one instrument() call
# --------------------------------------------------------------------------


def _schedulers_check(now: float) -> health.HealthCheckResult:
    active = _active
    if active is None:
        return evaluate([], now)
    return active.supervisor.health_check(now)


def _after_fork_in_child() -> None:
    active = _active
    if active is None:
        return
    active.supervisor.after_fork_in_child()
    active.stop.after_fork_in_child()


def _at_interpreter_exit() -> None:
    active = _active
    if active is not None:
        active.stop.at_interpreter_exit()


def _before_flush(deadline: float) -> None:
    active = _active
    if active is not None:
        active.stop.before_flush(deadline)


def _install_process_hooks() -> None:
    """Hooks registered once per process; each acts on the current instrumentation."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    lifecycle.on_fork_child(_after_fork_in_child)
    lifecycle.before_flush(_before_flush)
    register_exit_hook(_at_interpreter_exit)
    health.register_check("schedulers", _schedulers_check)
    for module_name in _PATCHED_WHEN_IMPORTED:
        wrapt.register_post_import_hook(_patch_late_module, module_name)


class APSchedulerInstrumentor(RenderInstrumentor):
    """Traces and meters APScheduler 3.x jobs and supervises the schedulers.

    ``instrument()`` accepts ``tracer_provider`` and ``meter_provider`` (the
    global ones by default) and, for tests, ``supervise=False`` (no
    background loop: call ``tick()`` on :func:`current_supervisor`),
    ``clock`` and ``wall`` (monotonic and unix time sources) and ``role``
    (which gunicorn process this is: ``() -> (role, master_pid)``).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        global _active
        from apscheduler.executors import base  # pylint: disable=import-outside-toplevel
        from apscheduler.schedulers.background import BackgroundScheduler  # pylint: disable=import-outside-toplevel
        from apscheduler.schedulers.base import BaseScheduler  # pylint: disable=import-outside-toplevel
        from apscheduler.schedulers.blocking import BlockingScheduler  # pylint: disable=import-outside-toplevel

        settings = get_settings()
        clock = kwargs.get("clock", time.monotonic)
        wall = kwargs.get("wall", time.time)
        tracer = trace.get_tracer(__name__, __version__, tracer_provider=kwargs.get("tracer_provider"))
        meter = metrics.get_meter(__name__, __version__, meter_provider=kwargs.get("meter_provider"))
        registry = RunRegistry()
        supervisor = Supervisor(
            settings, meter=meter, registry=registry, clock=clock, wall=wall, role=kwargs.get("role", gunicorn_role)
        )
        run_tracer = JobRunTracer(
            tracer,
            meter,
            registry,
            resolve=supervisor.control_of,
            accepting=supervisor.accepting,
            wall=wall,
            clock=clock,
        )
        supervisor.on_skipped = run_tracer.count_skipped
        stop = GracefulStop(supervisor, registry, settings.scheduler_shutdown_timeout_s)

        _ORIGINALS.setdefault("run_job", base.run_job)
        _ORIGINALS.setdefault("run_coroutine_job", base.run_coroutine_job)
        patched = []
        for module_name in _ALWAYS_PATCHED:
            patched += _patch_module(importlib.import_module(module_name))
        for module_name in _PATCHED_WHEN_IMPORTED:
            if module_name in sys.modules:
                patched += _patch_module(sys.modules[module_name])

        wrapt.wrap_function_wrapper(BaseScheduler, "start", _base_start)
        wrapt.wrap_function_wrapper(BaseScheduler, "shutdown", _base_shutdown)
        wrapt.wrap_function_wrapper(BaseScheduler, "_process_jobs", _process_jobs)
        wrapt.wrap_function_wrapper(BackgroundScheduler, "start", _background_start)
        wrapt.wrap_function_wrapper(BackgroundScheduler, "shutdown", _background_shutdown)
        wrapt.wrap_function_wrapper(BlockingScheduler, "_main_loop", _main_loop)

        loop = None
        if kwargs.get("supervise", True):
            interval = supervisor_interval(
                poll_s=settings.scheduler_leader_poll_s,
                stagger_s=settings.scheduler_stagger_s,
                backoff_s=settings.scheduler_restart_backoff_s,
            )
            loop = lifecycle.add_loop(lifecycle.BackgroundLoop("scheduler-supervisor", interval, supervisor.tick))
        _active = _Active(
            supervisor=supervisor,
            tracer=run_tracer,
            stop=stop,
            loop=loop,
            original_run_job=_ORIGINALS["run_job"],
            original_run_coroutine_job=_ORIGINALS["run_coroutine_job"],
            patched_modules=patched,
        )
        _install_process_hooks()
        if loop is not None:
            # Fork handling, the exit flush and gunicorn's roles, also when
            # another distro configured the SDK (all idempotent).
            lifecycle.install(settings.shutdown_timeout_s)
            gunicorn.install()

    def _uninstrument(self, **kwargs: Any) -> None:
        global _active
        from apscheduler.schedulers.background import BackgroundScheduler  # pylint: disable=import-outside-toplevel
        from apscheduler.schedulers.base import BaseScheduler  # pylint: disable=import-outside-toplevel
        from apscheduler.schedulers.blocking import BlockingScheduler  # pylint: disable=import-outside-toplevel

        active, _active = _active, None
        if active is None:
            return
        active.supervisor.enabled = False
        if active.loop is not None:
            active.loop.stop(time.monotonic() + 1.0)
        for module, name, original in active.patched_modules:
            setattr(module, name, original)
        unwrap(BaseScheduler, "start")
        unwrap(BaseScheduler, "shutdown")
        unwrap(BaseScheduler, "_process_jobs")
        unwrap(BackgroundScheduler, "start")
        unwrap(BackgroundScheduler, "shutdown")
        unwrap(BlockingScheduler, "_main_loop")
        active.supervisor.release_leadership()
        active.supervisor.forget_all()


def current_supervisor() -> Supervisor | None:
    """The supervisor of the active instrumentation (None when not instrumented)."""
    return _active.supervisor if _active is not None else None


def current_stop() -> GracefulStop | None:
    return _active.stop if _active is not None else None


def _patch_module(module: Any) -> list[tuple[Any, str, Any]]:
    patched = []
    for name, replacement in (("run_job", traced_run_job), ("run_coroutine_job", traced_run_coroutine_job)):
        current = getattr(module, name, None)
        if current is None or current is replacement:
            continue
        setattr(module, name, replacement)
        patched.append((module, name, current))
    return patched


def _patch_late_module(module: Any) -> None:
    active = _active
    if active is not None:
        active.patched_modules.extend(_patch_module(module))
