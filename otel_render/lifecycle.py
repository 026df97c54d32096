"""Process lifecycle: the package's background loops, re-created in every forked
child, and the bounded flush when the process exits.

Render's Python runtime starts gunicorn with ``--preload``: the app (and with it
this package) is imported in the master, then the master forks the workers. A
thread does not survive ``fork``; a lock held by another thread at that moment
stays held forever in the child. So every thread the package owns is a
:class:`BackgroundLoop` registered here, and :func:`after_fork_in_child` (hooked
with ``os.register_at_fork``) gives each child fresh locks and fresh threads.
Other modules that keep per-process state register a plain callback with
:func:`on_fork_child`.

At exit, :func:`shutdown` stops the loops and shuts the SDK providers down in
parallel under one total deadline (``OTEL_RENDER_SHUTDOWN_TIMEOUT_S``): a process
whose collector is unreachable exits after its own work, not after the
exporters' retry schedules (7-17 s with plain ``opentelemetry-instrument``).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

_logger = logging.getLogger("otel_render.lifecycle")


class Stoppable(Protocol):
    """Anything with a ``shutdown`` the final flush must call (SDK providers)."""

    def shutdown(self) -> Any: ...


class BackgroundLoop:
    """A daemon thread calling :meth:`tick` every ``interval_s`` seconds.

    Subclasses (or callers passing ``tick``) keep the work in :meth:`tick`, a
    plain method that tests call directly with an injected clock; the thread
    only schedules it. Exceptions from a tick are logged once per distinct
    message and never stop the loop. After ``fork`` the child gets a new thread
    (see :func:`after_fork_in_child`).
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    def tick(self) -> None:
        if self._tick is not None:
            self._tick()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"otel-render-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Ask the loop to stop and wait for it until ``deadline`` (monotonic)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def reset_after_fork(self) -> None:
        """Forget the parent's thread; the child starts its own."""
        self._thread = None
        self._stop = threading.Event()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # pylint: disable=broad-except
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    self._last_error = message
                    _logger.warning("otel-render: %s loop failed: %s", self.name, message, exc_info=True)


@dataclass
class _Registry:
    loops: list[BackgroundLoop] = field(default_factory=list)
    fork_callbacks: list[Callable[[], None]] = field(default_factory=list)
    providers: list[Stoppable] = field(default_factory=list)
    before_flush: list[Callable[[float], None]] = field(default_factory=list)
    installed: bool = False
    shut_down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_registry = _Registry()


def add_loop(loop: BackgroundLoop, *, start: bool = True) -> BackgroundLoop:
    """Own ``loop``: restart it in forked children, stop it at exit."""
    with _registry.lock:
        _registry.loops.append(loop)
    if start:
        loop.start()
    return loop


def on_fork_child(callback: Callable[[], None]) -> None:
    """Run ``callback`` in every child right after ``fork`` (before loops restart)."""
    with _registry.lock:
        _registry.fork_callbacks.append(callback)


def add_provider(provider: Stoppable) -> None:
    """Shut ``provider`` down (flushing it) at exit, under the total deadline."""
    with _registry.lock:
        _registry.providers.append(provider)


def before_flush(callback: Callable[[float], None]) -> None:
    """Run ``callback(deadline)`` at exit before the providers flush (e.g. stop schedulers)."""
    with _registry.lock:
        _registry.before_flush.append(callback)


def loops() -> Sequence[BackgroundLoop]:
    return tuple(_registry.loops)


def after_fork_in_child() -> None:
    """Re-create per-process state in a forked child, in registration order."""
    _registry.lock = threading.Lock()
    _registry.shut_down = False
    for callback in list(_registry.fork_callbacks):
        try:
            callback()
        except Exception:  # pylint: disable=broad-except
            _logger.warning("otel-render: after-fork callback %r failed", callback, exc_info=True)
    for loop in list(_registry.loops):
        loop.reset_after_fork()
        try:
            loop.start()
        except Exception:  # pylint: disable=broad-except
            _logger.warning("otel-render: could not restart %s after fork", loop.name, exc_info=True)


@dataclass
class ShutdownReport:
    """What the final flush managed within its deadline."""

    seconds: float
    finished: list[str]
    abandoned: list[str]


def shutdown(timeout_s: float) -> ShutdownReport:
    """Stop loops and flush every provider, all within ``timeout_s`` in total.

    Providers shut down in parallel daemon threads; whatever has not finished by
    the deadline is abandoned (its threads die with the interpreter), so an
    unreachable collector costs at most ``timeout_s``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    with _registry.lock:
        if _registry.shut_down:
            return ShutdownReport(0.0, [], [])
        _registry.shut_down = True
        callbacks = list(_registry.before_flush)
        loops_to_stop = list(reversed(_registry.loops))
        providers = list(_registry.providers)

    for callback in callbacks:
        _call_quietly(callback, deadline)
    for loop in loops_to_stop:
        _call_quietly(loop.stop, deadline)

    workers: dict[str, threading.Thread] = {}
    for provider in providers:
        name = type(provider).__name__
        thread = threading.Thread(
            target=_call_quietly, args=(provider.shutdown,), name=f"otel-render-shutdown-{name}", daemon=True
        )
        thread.start()
        workers[name] = thread
    finished, abandoned = [], []
    for name, thread in workers.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        (abandoned if thread.is_alive() else finished).append(name)
    if abandoned:
        _logger.warning(
            "otel-render: telemetry flush did not finish within %.1f s (OTEL_RENDER_SHUTDOWN_TIMEOUT_S); "
            "dropped what was left in %s",
            timeout_s,
            ", ".join(abandoned),
        )
    return ShutdownReport(time.monotonic() - started, finished, abandoned)


def _call_quietly(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: shutdown step %r failed", function, exc_info=True)


def install(timeout_s: float, *, handle_sigterm: bool = True) -> None:
    """Hook fork and exit once per process tree (idempotent)."""
    if _registry.installed:
        return
    _registry.installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_fork_in_child)
    atexit.register(shutdown, timeout_s)
    if handle_sigterm:
        _exit_on_sigterm()


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit, so the final flush runs.

    Only when nobody handles SIGTERM yet (the default action kills the process
    without running ``atexit``) and only from the main thread. Servers that
    install their own handler later, such as gunicorn, replace this one.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _raise_system_exit)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)
