"""Memory actions: give memory back to the operating system, and measure it.

``gc.collect()`` frees unreachable reference cycles, but freed memory does not
necessarily leave the process:

- objects of at most 512 bytes live in CPython's pymalloc arenas, which go back
  to the OS only when a whole arena is empty; fragmentation keeps most of them;
- larger objects come from ``malloc``; glibc keeps freed chunks in its heaps
  until ``malloc_trim(0)`` hands the free pages back.

So the memory-pressure action is: collect, then trim (on glibc only; detected,
skipped elsewhere), then the callbacks the app registered with
:func:`on_memory_pressure` (cache clears), measuring resident memory around
each step so the action log says what each step gave back.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import psutil

_logger = logging.getLogger("otel_render.recovery")

_callbacks: list[Callable[[], object]] = []
_callbacks_lock = threading.Lock()


@dataclass(frozen=True)
class Reclaimed:
    """Resident memory before and after one step."""

    step: str  # gc_collect | malloc_trim | callbacks
    rss_before: int
    rss_after: int
    detail: str = ""

    @property
    def freed(self) -> int:
        return max(0, self.rss_before - self.rss_after)


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def uss_bytes() -> int:
    """Memory unique to this process (reads /proc/self/smaps: a few ms; background only)."""
    return psutil.Process().memory_full_info().uss


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def malloc_trim_available() -> bool:
    return _malloc_trim() is not None


def collect_garbage() -> Reclaimed:
    before = rss_bytes()
    collected = gc.collect()
    return Reclaimed("gc_collect", before, rss_bytes(), f"{collected} objects collected")


def trim_malloc() -> Reclaimed | None:
    """``malloc_trim(0)`` on glibc; None where it does not exist."""
    trim = _malloc_trim()
    if trim is None:
        return None
    before = rss_bytes()
    trim(0)
    return Reclaimed("malloc_trim", before, rss_bytes())


def on_memory_pressure(callback: Callable[[], object]) -> Callable[[], object]:
    """Register ``callback`` to run when the instance is short of memory.

    Use it to drop caches the app can rebuild. Callbacks run on the recovery
    thread, one after the other; an exception is logged and the next runs.
    Usable as a decorator.
    """
    with _callbacks_lock:
        _callbacks.append(callback)
    return callback


def run_pressure_callbacks() -> Reclaimed | None:
    with _callbacks_lock:
        callbacks = list(_callbacks)
    if not callbacks:
        return None
    before = rss_bytes()
    failed = 0
    for callback in callbacks:
        try:
            callback()
        except Exception:  # pylint: disable=broad-except
            failed += 1
            _logger.warning("otel-render: memory pressure callback %r failed", callback, exc_info=True)
    gc.collect()
    trim_malloc()
    detail = f"{len(callbacks)} callback(s)" + (f", {failed} failed" if failed else "")
    return Reclaimed("callbacks", before, rss_bytes(), detail)


def relieve_pressure() -> list[Reclaimed]:
    """Collect, trim, then the app's callbacks; each step's result."""
    steps = [collect_garbage()]
    for step in (trim_malloc(), run_pressure_callbacks()):
        if step is not None:
            steps.append(step)
    return steps
