"""Leader election: which process of the instance (and, optionally, of the
whole service) runs the scheduled jobs, and where the previous runner stopped.

The per-instance lock is a POSIX record lock (``fcntl.lockf``) on
``<instance dir>/scheduler.lock``. Unlike ``flock`` locks, record locks belong
to a *process*: a child created by ``fork`` does not inherit them, and the
kernel drops them the moment their process dies (SIGKILL and OOM kill
included). So the lock is taken in the process that will run the jobs, and
even a lock taken before a fork is never shared with the children. One caveat
of record locks: closing *any* descriptor of the file in the owning process
releases the lock, so the file is opened once per process, here, and nowhere
else.

Across instances, :class:`AdvisoryLock` holds a PostgreSQL session-level
advisory lock on a dedicated connection; when that session is lost the server
releases the lock and the process steps down at its next check.

:class:`Election` is the logic on top of the locks: when to try (every
``poll_s`` seconds on standby), when to verify (the leader pings its locks as
often), with the clock passed in, so tests drive it without waiting.

:class:`ProgressStore` is the handover record: after each round of job
processing, the runner writes the next run time of every job of its in-memory
job stores. A process that takes over continues after those times instead of
re-running what its predecessor already ran (in-memory job stores are
per-process copies, so its own copy of the schedule is stale).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from otel_render import instance

_logger = logging.getLogger("otel_render.scheduler")

LOCK_FILE = "scheduler.lock"
PROGRESS_FILE = "scheduler-progress.json"


class LeaderLock(Protocol):
    """One lock the leader must hold. ``local`` locks cost no network round
    trip and may be tried on the app's thread (when a scheduler starts)."""

    local: bool

    def try_acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...

    def after_fork_in_child(self) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class LeaderRecord:
    """What the lock file says about the process holding it."""

    pid: int
    since: float
    host: str

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "since": self.since, "host": self.host}


class InstanceLock:
    """A POSIX record lock on ``<directory>/scheduler.lock`` (one per process)."""

    local = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        instance.ensure_private_directory(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        record = LeaderRecord(pid=os.getpid(), since=time.time(), host=socket.gethostname())
        payload = json.dumps(record.to_dict()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    def after_fork_in_child(self) -> None:
        # The child holds no record lock; closing its copy of the descriptor
        # releases only the child's locks (none), never the parent's.
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def holder(self) -> LeaderRecord | None:
        """The record the current (or last) holder wrote, if readable."""
        try:
            if self._fd is not None:
                # Opening and closing the file again here would drop our lock.
                raw = os.pread(self._fd, 4096, 0)
            else:
                raw = self.path.read_bytes()
            data = json.loads(raw or b"null")
            return LeaderRecord(pid=int(data["pid"]), since=float(data["since"]), host=str(data["host"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"the lock file {self.path}"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    digest = hashlib.blake2b(f"otel-render/scheduler/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def normalize_postgres_url(url: str) -> str:
    """``postgres://`` (Heroku and Render style) is ``postgresql://`` to SQLAlchemy."""
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://") :]
    return url


_LIBPQ_DRIVERS = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg")


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock, held on its own connection.

    Connecting, locking and pinging run on the supervisor's thread, never on a
    request; libpq timeouts bound each of them, so a black-holed database
    costs a few seconds per attempt, not a TCP retransmission schedule.
    """

    local = False

    def __init__(self, url: str, name: str, *, timeout_s: float = 5.0) -> None:
        self.url = normalize_postgres_url(url)
        self.key = advisory_key(name)
        self.timeout_s = timeout_s
        self._engine: Any = None
        self._connection: Any = None
        # Connections inherited through fork are never closed in the child (that
        # would end the parent's session and its lock); they are kept here.
        self._inherited: list[Any] = []

    @property
    def held(self) -> bool:
        return self._connection is not None

    def _connect(self) -> Any:
        from sqlalchemy import create_engine  # pylint: disable=import-outside-toplevel
        from sqlalchemy.engine import make_url  # pylint: disable=import-outside-toplevel
        from sqlalchemy.pool import NullPool  # pylint: disable=import-outside-toplevel

        url = make_url(self.url)
        connect_args: dict[str, Any] = {}
        if url.drivername in _LIBPQ_DRIVERS:
            timeout_ms = int(self.timeout_s * 1000)
            connect_args = {
                "connect_timeout": max(1, int(self.timeout_s)),
                "application_name": "otel-render-scheduler-leader",
                "keepalives": 1,
                "keepalives_idle": max(1, int(self.timeout_s)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "tcp_user_timeout": timeout_ms,
                "options": f"-c statement_timeout={timeout_ms}",
            }
        self._engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def try_acquire(self) -> bool:
        from sqlalchemy import text  # pylint: disable=import-outside-toplevel

        if self._connection is not None:
            return self.still_held()
        connection = self._connect()
        try:
            acquired = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar())
        except Exception:
            self._close(connection)
            raise
        if not acquired:
            self._close(connection)
            return False
        self._connection = connection
        return True

    def still_held(self) -> bool:
        from sqlalchemy import text  # pylint: disable=import-outside-toplevel

        connection = self._connection
        if connection is None:
            return False
        try:
            connection.execute(text("SELECT 1")).scalar()
        except Exception as exc:  # pylint: disable=broad-except
            _logger.warning("otel-render: lost the scheduler's PostgreSQL advisory lock (%s)", type(exc).__name__)
            self._connection = None
            self._close(connection)
            return False
        return True

    def release(self) -> None:
        from sqlalchemy import text  # pylint: disable=import-outside-toplevel

        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        self._close(connection)

    def _close(self, connection: Any) -> None:
        with contextlib.suppress(Exception):
            connection.close()
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.dispose()
            self._engine = None

    def after_fork_in_child(self) -> None:
        if self._connection is not None:
            self._inherited.append((self._engine, self._connection))
        self._connection = None
        self._engine = None

    def describe(self) -> str:
        return f"the PostgreSQL advisory lock {self.key}"


class Election:
    """Leadership over a sequence of locks, all of which the leader holds.

    ``tick(now)`` is the whole protocol: on standby, try to take every lock
    (in order) once per ``poll_s``; as leader, verify them as often and step
    down when one is lost. Locks taken on a failed attempt stay held (the
    instance lock keeps this process first in line for the database lock).
    Errors of a lock are logged once per distinct message and count as "not
    acquired".
    """

    def __init__(self, locks: Sequence[LeaderLock], poll_s: float) -> None:
        self.locks = list(locks)
        self.poll_s = poll_s
        self.leader = False
        self.since: float | None = None
        self._next_check: float | None = None
        self._last_error: str | None = None

    def tick(self, now: float) -> bool:
        if self._next_check is not None and now < self._next_check:
            return self.leader
        self._next_check = now + self.poll_s
        if self.leader:
            if not all(self._safely(lock.still_held) for lock in self.locks):
                self.leader = False
                self.since = None
            return self.leader
        return self._attempt(now)

    def try_now(self, now: float) -> bool:
        """Try at once, whatever the poll schedule, the locks that need no
        network (a scheduler is starting on the app's thread); a database lock
        is left to the next :meth:`tick`, which comes right away."""
        if self.leader:
            return True
        self._next_check = None
        return self._attempt(now, local_only=True)

    def _attempt(self, now: float, *, local_only: bool = False) -> bool:
        for lock in self.locks:
            if local_only and not lock.local:
                return False
            if not self._safely(lock.try_acquire):
                return False
        self.leader = True
        self.since = now
        self._last_error = None
        return True

    def _safely(self, call: Any) -> bool:
        try:
            return bool(call())
        except Exception as exc:  # pylint: disable=broad-except
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                self._last_error = message
                _logger.warning("otel-render: scheduler leader election: %s", message)
            return False

    def release(self) -> None:
        for lock in reversed(self.locks):
            with contextlib.suppress(Exception):
                lock.release()
        self.leader = False
        self.since = None

    def after_fork_in_child(self) -> None:
        for lock in self.locks:
            lock.after_fork_in_child()
        self.leader = False
        self.since = None
        self._next_check = None
        self._last_error = None


class ProgressStore:
    """The handover record: per scheduler, the next run time of each job."""

    def __init__(self, directory: Path, instance: str) -> None:
        self.path = directory / PROGRESS_FILE
        self.instance = instance
        self._last_written: dict[str, dict[str, float]] = {}

    def read(self, scheduler: str) -> dict[str, float] | None:
        """Next run times (unix seconds) by job id, or None when no runner of
        this instance has recorded this scheduler yet."""
        try:
            data = json.loads(self.path.read_bytes())
            if data.get("instance") != self.instance:
                return None
            jobs = data["schedulers"][scheduler]
            return {str(job_id): float(when) for job_id, when in jobs.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def write(self, scheduler: str, jobs: Mapping[str, float]) -> None:
        """Record ``jobs`` for ``scheduler`` (only when it changed)."""
        jobs = dict(jobs)
        if self._last_written.get(scheduler) == jobs:
            return
        self._last_written[scheduler] = jobs
        try:
            current = json.loads(self.path.read_bytes())
            if current.get("instance") != self.instance:
                current = {}
        except (OSError, ValueError, AttributeError):
            current = {}
        schedulers = dict(current.get("schedulers") or {})
        schedulers[scheduler] = jobs
        payload = json.dumps({"instance": self.instance, "pid": os.getpid(), "schedulers": schedulers}).encode()
        instance.ensure_private_directory(self.path.parent)
        temporary = self.path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
        temporary.write_bytes(payload)
        os.replace(temporary, self.path)

    def after_fork_in_child(self) -> None:
        self._last_written = {}
