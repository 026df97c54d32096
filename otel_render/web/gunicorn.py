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
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wrapt

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
    for callback in list(_master_start_callbacks):
        try:
            callback()
        except Exception:  # pylint: disable=broad-except
            _logger.warning("otel-render: master start callback failed", exc_info=True)
    return wrapped(*args, **kwargs)


def _spawn_worker(wrapped: Callable[..., Any], arbiter: Any, args: tuple, kwargs: dict) -> Any:
    if _state.master_pid is None:
        _state.master_pid = os.getpid()
    taken = {getattr(worker, "otel_render_slot", None) for worker in arbiter.WORKERS.values()}
    slot = next(number for number in itertools.count() if number not in taken)
    _state.pending_slot = slot
    # In the child this call only returns by raising SystemExit; in the
    # master it returns the child's pid.
    pid = wrapped(*args, **kwargs)
    worker = arbiter.WORKERS.get(pid)
    if worker is not None:
        worker.otel_render_slot = slot
    return pid


def worker_timeout_s() -> float | None:
    """The arbiter's worker ``--timeout`` in seconds (None outside gunicorn).

    The web and database deadlines stay below it, so that our timeouts fire
    before the arbiter kills a worker that looks stuck.
    """
    return _state.worker_timeout_s
