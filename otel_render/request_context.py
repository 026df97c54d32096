"""The unit of work being handled right now (a web request or a scheduler job),
shared between modules through a context variable.

The web layer begins a :class:`WorkRecord` when a request starts and ends it
when the response is done; the database layer adds each statement's duration
to it with :func:`add_db_query`, so a request's span and meters can carry its
query count and time in the database without the two layers knowing each
other. Context variables follow threads and asyncio tasks, so this works under
gunicorn's sync, gthread and gevent workers alike.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass
class WorkRecord:
    """Per-request (or per-job) accumulators; mutated only by the owning thread."""

    kind: str = "request"  # request | job
    correlation_id: str | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    db_queries: int = 0
    db_time_s: float = 0.0


_current: ContextVar[WorkRecord | None] = ContextVar("otel_render_work", default=None)


def begin(record: WorkRecord) -> Token:
    """Make ``record`` the current unit of work; pass the token to :func:`end`."""
    return _current.set(record)


def end(token: Token) -> None:
    _current.reset(token)


def current() -> WorkRecord | None:
    return _current.get()


def add_db_query(duration_s: float) -> None:
    """Count one database statement against the current request or job, if any."""
    record = _current.get()
    if record is not None:
        record.db_queries += 1
        record.db_time_s += duration_s
