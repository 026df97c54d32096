"""What the diagnostics endpoint shows: bounded rings of recent error contexts,
stalls (requests or jobs running too long, with their stacks) and recovery
actions, plus the capture of an error context itself.

The record types follow the seed design's ``ErrorContext`` (field names kept);
every string that came from outside (message, stack, headers) is scrubbed
before it is stored. Rings are bounded and per process; the endpoints merge
the workers' rings. Each subsystem contributes to the ``system`` part of an
error context through :func:`add_system_state` (memory, database status,
active connections, in-flight requests), so this module depends on none of
them.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from otel_render.scrub import default as scrubber

_logger = logging.getLogger("otel_render.diagnostics")

T = TypeVar("T")

MAX_STACK_CHARS = 8000
MAX_MESSAGE_CHARS = 2000


class Ring(Generic[T]):
    """A bounded, thread-safe list of the most recent records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.total = 0  # how many were ever appended (older ones fell off)

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            self.total += 1

    def snapshot(self) -> list[T]:
        """Oldest first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total = 0

    def reset_after_fork(self) -> None:
        """A child starts with a fresh lock; it keeps no records of its parent."""
        self._lock = threading.Lock()
        self._items = deque(maxlen=self.capacity)
        self.total = 0


def utc_now_iso(now: float | None = None) -> str:
    moment = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(now, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ErrorInfo:
    message: str
    stack: str
    type: str
    code: str | None = None


@dataclass(frozen=True)
class RequestInfo:
    method: str
    path: str
    route: str | None
    headers: Mapping[str, str]
    ip: str | None
    userAgent: str | None  # noqa: N815 - the seed's field name


@dataclass(frozen=True)
class ErrorContext:
    """The seed's ErrorContext: what failed, for which request, in what state."""

    correlationId: str | None  # noqa: N815
    traceId: str | None  # noqa: N815
    timestamp: str
    error: ErrorInfo
    request: RequestInfo | None
    system: Mapping[str, Any]
    source: str = "request"  # request | job

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StallRecord:
    """A request or job that ran past its limit, with the stack it was stuck in."""

    kind: str  # request | job
    name: str  # route or job id
    correlationId: str | None  # noqa: N815
    traceId: str | None  # noqa: N815
    timestamp: str
    running_s: float
    limit_s: float
    thread: str
    stack: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ActionRecord:
    """One thing the recovery manager (or a supervisor) did, and how it went."""

    timestamp: str
    rule: str
    action: str
    outcome: str  # done | skipped | failed | dry-run | escalated
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


errors: Ring[ErrorContext] = Ring(50)
stalls: Ring[StallRecord] = Ring(50)
actions: Ring[ActionRecord] = Ring(200)

_system_state_sources: dict[str, Callable[[], Mapping[str, Any]]] = {}


def add_system_state(name: str, source: Callable[[], Mapping[str, Any]]) -> None:
    """Contribute fields to the ``system`` part of error contexts.

    ``source`` must be cheap and must not block (it runs when an error is
    captured, on the failing request's thread); its keys are merged in.
    """
    _system_state_sources[name] = source


def system_state() -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, source in list(_system_state_sources.items()):
        try:
            state.update(source())
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: system state source %s failed", name, exc_info=True)
    return state


def format_stack(frame_or_exc: Any) -> str:
    """A scrubbed, size-bounded stack from an exception or a frame."""
    if isinstance(frame_or_exc, BaseException):
        lines = traceback.format_exception(type(frame_or_exc), frame_or_exc, frame_or_exc.__traceback__)
    else:
        lines = traceback.format_stack(frame_or_exc)
    text = scrubber.text("".join(lines))
    return text if len(text) <= MAX_STACK_CHARS else "..." + text[-MAX_STACK_CHARS:]


def thread_stack(thread_id: int) -> str | None:
    """The current stack of another thread (for stalls), or None if it has gone."""
    frame = sys._current_frames().get(thread_id)  # pylint: disable=protected-access
    return format_stack(frame) if frame is not None else None


def capture_error_context(
    exc: BaseException,
    *,
    correlation_id: str | None,
    trace_id: str | None,
    request: RequestInfo | None = None,
    source: str = "request",
    now: float | None = None,
) -> ErrorContext:
    """Build an :class:`ErrorContext` for ``exc`` and keep it in :data:`errors`."""
    message = scrubber.text(str(exc))[:MAX_MESSAGE_CHARS]
    code = getattr(exc, "code", None) or getattr(exc, "pgcode", None)
    context = ErrorContext(
        correlationId=correlation_id,
        traceId=trace_id,
        timestamp=utc_now_iso(now),
        error=ErrorInfo(
            message=message,
            stack=format_stack(exc),
            type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            code=str(code) if code is not None else None,
        ),
        request=request,
        system=system_state(),
        source=source,
    )
    errors.append(context)
    return context


def reset_after_fork() -> None:
    for ring in (errors, stalls, actions):
        ring.reset_after_fork()
