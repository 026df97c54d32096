"""The per-instance directory: where the processes of one instance (the gunicorn
master and its workers) leave files for each other — metric snapshots for the
local endpoints, the scheduler's leader lock and handover record.

One directory per instance *run*: ``<base>/instance-<pid>-<start>`` named after
the process that owns the run (the gunicorn master, or the process itself
outside gunicorn), so files of a previous run on the same machine are never
mistaken for this one's. ``<base>`` is ``OTEL_RENDER_INSTANCE_DIR``, else
``/dev/shm/otel-render-<uid>`` (tmpfs: nothing touches a disk), else the same
name under the temp directory. Directories are private (mode 0700) because the
base lives in world-writable ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import psutil

from otel_render.config import Settings
from otel_render.web import gunicorn

_SHM = Path("/dev/shm")
_start_times: dict[int, float] = {}


def default_base_directory() -> Path:
    """``/dev/shm/otel-render-<uid>`` where there is a tmpfs, else under the temp directory."""
    name = f"otel-render-{os.getuid()}"
    if _SHM.is_dir() and os.access(_SHM, os.W_OK | os.X_OK):
        return _SHM / name
    return Path(tempfile.gettempdir()) / name


def base_directory(settings: Settings) -> Path:
    return Path(settings.instance_dir) if settings.instance_dir else default_base_directory()


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if it is gone."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.Error, OSError):
        return None


def start_time(pid: int) -> float:
    """:func:`process_start_time`, remembered (it does not change while the process lives)."""
    started = _start_times.get(pid)
    if started is None:
        started = process_start_time(pid) or time.time()
        _start_times[pid] = started
    return started


def owner_pid() -> int:
    """The process whose run the instance directory belongs to: the gunicorn
    master, or this process outside gunicorn.

    The arbiter hook knows the master when the pipeline was configured in it
    (``opentelemetry-instrument gunicorn ...``). When the app calls
    ``otel_render.configure()`` itself, in each worker, the hook never saw the
    master: a worker of a gunicorn parent then names that parent.
    """
    master = gunicorn.master_pid()
    if master is not None:
        return master
    if "gunicorn.workers.base" in sys.modules:
        try:
            parent = psutil.Process(os.getppid())
            if any("gunicorn" in part for part in parent.cmdline()[:3]):
                return parent.pid
        except (psutil.Error, OSError):
            pass
    return os.getpid()


def run_directory(base: Path, owner: int, owner_started: float) -> Path:
    """The directory of one instance run, named after the process that owns it."""
    return base / f"instance-{owner}-{int(owner_started)}"


def directory(settings: Settings) -> Path:
    """This instance run's directory (not created; see :func:`ensure_private_directory`)."""
    owner = owner_pid()
    return run_directory(base_directory(settings), owner, start_time(owner))


def ensure_private_directory(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is a real
    directory of ours: the base lives in world-writable ``/dev/shm``."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.getuid()}")
