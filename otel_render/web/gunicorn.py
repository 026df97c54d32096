"""gunicorn: which process of the arbiter this one is.

When the master spawns a worker it gives it the lowest free *slot* number; the
replacement of a recycled or crashed worker takes the freed slot. The
package names each process after its slot (``service.instance.id`` =
``<instance>-w<slot>``, the master ``<instance>-master``), so the number of
series in the backend stays bounded by the number of workers however often
workers are recycled, where a fresh UUID per process would add a series per
recycle.

The hook wraps ``gunicorn.arbiter.Arbiter`` when gunicorn is imported (it is
imported after ``sitecustomize`` runs), so it works with and without
``--preload``. The master knows its role from ``Arbiter.setup`` on, which is
where ``--preload`` imports the app: code that runs at import (a scheduler
started by the app) can tell that this process is about to fork. Nothing here
runs on the request path.

:class:`GunicornInstrumentor` (entry point ``gunicorn``) hooks the point where
gunicorn loads the WSGI app and puts it behind otel-render's middleware
(``web/wsgi.py``), and gives gunicorn's own error and access logs the log
format of ``logs.py``.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from otel_render.instrumentor import RenderInstrumentor

_logger = logging.getLogger("otel_render.web.gunicorn")

ROLE_MASTER = "master"
ROLE_WORKER = "worker"


@dataclass
class _ArbiterState:
    master_pid: int | None = None
    # Set in the master just before each fork; the child inherits the value.
    pending_slot: int | None = None
    worker_timeout_s: float | None = None
    installed: bool = False
    # The signal mask to restore in a new worker once it has its own handlers.
    boot_sigmask: set[signal.Signals] | None = None


_state = _ArbiterState()
_master_start_callbacks: list[Callable[[], None]] = []
_install_lock = threading.Lock()


def identity() -> tuple[str | None, int | None]:
    """``(role, slot)`` of this process: ``("master", None)``, ``("worker", n)`` or ``(None, None)``."""
    if _state.master_pid is None:
        return None, None
    if os.getpid() == _state.master_pid:
        return ROLE_MASTER, None
    return ROLE_WORKER, _state.pending_slot


def master_pid() -> int | None:
    """The arbiter's pid (inherited by its workers), or None outside gunicorn."""
    return _state.master_pid


def on_master_start(callback: Callable[[], None]) -> None:
    """Run ``callback`` in the master when the arbiter starts (after config is read)."""
    _master_start_callbacks.append(callback)


def install() -> None:
    """Wrap the arbiter once gunicorn is imported (idempotent)."""
    with _install_lock:
        if _state.installed:
            return
        _state.installed = True
    wrapt.register_post_import_hook(_patch_arbiter, "gunicorn.arbiter")


def _patch_arbiter(module: Any) -> None:
    wrapt.wrap_function_wrapper(module, "Arbiter.setup", _setup)
    wrapt.wrap_function_wrapper(module, "Arbiter.start", _start)
    wrapt.wrap_function_wrapper(module, "Arbiter.spawn_worker", _spawn_worker)


def _setup(wrapped: Callable[..., Any], arbiter: Any, args: tuple, kwargs: dict) -> Any:
    # Under --preload the arbiter imports the app in ``setup``: from here on this
    # process is the master, so code running at import (a scheduler's start)
    # already knows it will fork and must not take per-process resources.
    _state.master_pid = os.getpid()
    return wrapped(*args, **kwargs)


def _start(wrapped: Callable[..., Any], arbiter: Any, args: tuple, kwargs: dict) -> Any:
    _state.master_pid = os.getpid()
    timeout = getattr(arbiter, "timeout", None)
    _state.worker_timeout_s = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None
    for callback in _master_start_callbacks:
        try:
            callback()
        except Exception:  # pylint: disable=broad-except
            _logger.warning("otel-render: master start callback failed", exc_info=True)
    return wrapped(*args, **kwargs)


#: Signals the master sends its workers to stop them. Between ``fork`` and the
#: worker's own ``init_signals`` the child still runs the master's handler,
#: which only queues a signal for the master's loop: one sent in that window
#: was lost, and the master waited its whole graceful timeout. Every
#: after-fork hook (the SDK's, ours, the app's) widens the window, so the
#: master blocks these signals across the fork; the child keeps them pending
#: and receives them once its handlers are in place.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


def _spawn_worker(wrapped: Callable[..., Any], arbiter: Any, args: tuple, kwargs: dict) -> Any:
    if _state.master_pid is None:
        _state.master_pid = os.getpid()
    taken = {getattr(worker, "otel_render_slot", None) for worker in arbiter.WORKERS.values()}
    slot = next(number for number in itertools.count() if number not in taken)
    _state.pending_slot = slot
    _hook_worker_signals(getattr(arbiter, "worker_class", None))
    _state.boot_sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        # In the child this call only returns by raising SystemExit; in the
        # master it returns the child's pid.
        pid = wrapped(*args, **kwargs)
    finally:
        if os.getpid() == _state.master_pid and _state.boot_sigmask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, _state.boot_sigmask)
    worker = arbiter.WORKERS.get(pid)
    if worker is not None:
        worker.otel_render_slot = slot
    return pid


def _hook_worker_signals(worker_class: Any) -> None:
    """Wrap ``init_signals`` of the base worker and of ``worker_class`` (which
    may define its own without calling the base's, like the ASGI worker)."""
    from gunicorn.workers.base import Worker  # pylint: disable=import-outside-toplevel

    for owner in {Worker, *([worker_class] if isinstance(worker_class, type) else [])}:
        if "init_signals" in vars(owner) and not getattr(vars(owner)["init_signals"], "_otel_render_hooked", False):
            wrapper = wrapt.FunctionWrapper(vars(owner)["init_signals"], _init_signals)
            wrapper._otel_render_hooked = True  # pylint: disable=protected-access
            setattr(owner, "init_signals", wrapper)


def _init_signals(wrapped: Callable[..., Any], _worker: Any, args: tuple, kwargs: dict) -> Any:
    """The worker's handlers are in place: let the held-back signals through."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        mask, _state.boot_sigmask = _state.boot_sigmask, None
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def worker_timeout_s() -> float | None:
    """The arbiter's worker ``--timeout`` in seconds (None outside gunicorn).

    The web and database deadlines stay below it, so that our timeouts fire
    before the arbiter kills a worker that looks stuck.
    """
    return _state.worker_timeout_s


# --------------------------------------------------------------------------
# The WSGI app gunicorn loads, and gunicorn's own logs
# --------------------------------------------------------------------------

#: Worker classes that serve ASGI apps: their app is left alone.
_ASGI_WORKER_MARKERS = ("uvicorn", "asgi")


def is_asgi(worker_class: str, app: Any) -> bool:
    """Whether gunicorn serves ``app`` as ASGI (uvicorn workers, gunicorn's own
    ``asgi`` worker, or an app whose ``__call__`` is a coroutine function)."""
    lowered = worker_class.lower()
    if any(marker in lowered for marker in _ASGI_WORKER_MARKERS):
        return True
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(type(app), "__call__", None)
    return inspect.iscoroutinefunction(call)


class _AppHook:
    active = False
    patched: set[str] = set()


def _wsgi(wrapped: Callable[..., Any], application: Any, args: tuple, kwargs: dict) -> Any:
    app = wrapped(*args, **kwargs)
    if not _AppHook.active or app is None:
        return app
    try:
        from otel_render import logs  # pylint: disable=import-outside-toplevel
        from otel_render.web import wsgi  # pylint: disable=import-outside-toplevel

        if isinstance(app, wsgi.OtelRenderMiddleware):
            return app
        worker_class = str(getattr(application.cfg, "worker_class_str", "") or "")
        if is_asgi(worker_class, app):
            _logger.warning(
                "otel-render: gunicorn serves an ASGI app (worker %s); otel-render instruments WSGI, so its "
                "requests are not instrumented",
                worker_class,
            )
            return app
        wrapped_app = wsgi.wrap(app)
        if getattr(application, "callable", None) is app:
            application.callable = wrapped_app  # later calls to wsgi() return the same wrapper
        logs.on_app_ready()
        return wrapped_app
    except Exception:  # pylint: disable=broad-except
        _logger.warning("otel-render: could not instrument the app gunicorn loaded", exc_info=True)
        return app


def _logger_setup(wrapped: Callable[..., Any], glogger: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    if _AppHook.active:
        from otel_render import logs  # pylint: disable=import-outside-toplevel

        logs.format_gunicorn_loggers(glogger.error_log, glogger.access_log)
    return result


def _access(wrapped: Callable[..., Any], glogger: Any, args: tuple, kwargs: dict) -> Any:
    """gunicorn writes the access line after the app returned: put the
    request's trace context back for it, so the line carries its ids."""
    if not glogger.access_log.handlers or len(args) < 3:
        return wrapped(*args, **kwargs)
    from otel_render.web import wsgi  # pylint: disable=import-outside-toplevel

    request = args[2].get(wsgi.ENVIRON_KEY) if isinstance(args[2], dict) else None
    if request is None:
        return wrapped(*args, **kwargs)
    from opentelemetry import context  # pylint: disable=import-outside-toplevel

    from otel_render import request_context  # pylint: disable=import-outside-toplevel

    token = context.attach(request.context)
    work_token = request_context.begin(request.work)
    try:
        return wrapped(*args, **kwargs)
    finally:
        request_context.end(work_token)
        context.detach(token)


def _patch_app_base(module: Any) -> None:
    if _AppHook.active and "app" not in _AppHook.patched:
        _AppHook.patched.add("app")
        wrapt.wrap_function_wrapper(module, "BaseApplication.wsgi", _wsgi)


def _patch_glogging(module: Any) -> None:
    if _AppHook.active and "glogging" not in _AppHook.patched:
        _AppHook.patched.add("glogging")
        wrapt.wrap_function_wrapper(module, "Logger.setup", _logger_setup)
        wrapt.wrap_function_wrapper(module, "Logger.access", _access)


class GunicornInstrumentor(RenderInstrumentor):
    """Puts every WSGI app gunicorn loads behind otel-render's middleware.

    Usage: nothing with ``opentelemetry-instrument gunicorn app:app`` (entry
    point ``gunicorn``). The hook is ``BaseApplication.wsgi()``, the one place
    gunicorn loads the app: in the master with ``--preload``, in each worker
    without. So Falcon, Bottle, Pyramid or a bare WSGI callable get the server
    span; Flask and Django apps get their route templates from their own hooks.
    ASGI apps (uvicorn workers, gunicorn's ``asgi`` worker) are left alone.
    gunicorn's error and access logs get ``OTEL_RENDER_LOG_FORMAT`` too.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("gunicorn >= 21",)

    def _instrument(self, **kwargs: Any) -> None:
        _AppHook.active = True
        wrapt.register_post_import_hook(_patch_app_base, "gunicorn.app.base")
        wrapt.register_post_import_hook(_patch_glogging, "gunicorn.glogging")

    def _uninstrument(self, **kwargs: Any) -> None:
        _AppHook.active = False
        if "app" in _AppHook.patched:
            from gunicorn.app import base  # pylint: disable=import-outside-toplevel

            unwrap(base.BaseApplication, "wsgi")
        if "glogging" in _AppHook.patched:
            from gunicorn import glogging  # pylint: disable=import-outside-toplevel

            unwrap(glogging.Logger, "setup")
            unwrap(glogging.Logger, "access")
        _AppHook.patched = set()
