"""The per-instance snapshot store: how the processes of one instance (the
gunicorn master and its workers) see each other's metrics.

Each process writes its latest :class:`~otel_render.local.snapshot.ProcessSnapshot`
as one JSON file in the instance's directory, atomically (write a temporary
file, then ``os.replace``), so a reader never sees half a file. Whoever serves
an endpoint reads the files of the live processes and merges them with its
own fresh snapshot.

A process that exits (a recycled or crashed worker) leaves its last file
behind. What it counted (requests served, jobs run) must stay in the
instance's totals, or they would go backwards: the next process to notice
folds the file's counters and histograms into ``retired.json`` (under an
exclusive ``flock``, taken without waiting: if another process is folding, it
is left to that one) and deletes it. ``retired.json`` lists the files it has
folded, so a fold interrupted between writing it and deleting the file is
never counted twice, and readers, which take no lock, never count a process
both as retired and as exited.

The directory is the instance run's directory (:mod:`otel_render.instance`).
Directories of runs whose owner has
gone are removed by the next owner to start; the owner removes its own at exit.
A worker killed with SIGKILL loses what it counted since its last publication
(``OTEL_RENDER_HEALTH_INTERVAL_S``); a worker that exits normally (gunicorn's
``--max-requests``, a graceful recycle) publishes once more on its way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_render.instance import ensure_private_directory, process_start_time
from otel_render.local.snapshot import (
    InstanceMetrics,
    ProcessInfo,
    ProcessSnapshot,
    Series,
    add_series,
    merge_instance,
    retained_part,
    series_from_json,
    series_to_json,
)

_logger = logging.getLogger("otel_render.local")

SNAPSHOT_PREFIX = "p-"
DIAGNOSTICS_PREFIX = "d-"
RETIRED_FILE = "retired.json"
RETIRED_DIAGNOSTICS_FILE = "retired-diagnostics.json"
#: Records kept per diagnostics ring from exited processes (the newest).
RETIRED_RING_CAPACITY = {"errors": 50, "stalls": 50, "actions": 200}
LOCK_FILE = ".lock"


def process_is_alive(info: ProcessInfo) -> bool:
    """Whether the process that wrote a snapshot still runs (a reused pid does not count)."""
    started = process_start_time(info.pid)
    return started is not None and abs(started - info.started) < 1.0


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _tag(record: Any, label: str | None) -> Any:
    if isinstance(record, dict) and label and "process" not in record:
        return {**record, "process": label}
    return record


@dataclass
class Retired:
    """What exited processes counted, and which snapshot files it includes."""

    series: dict[str, Series] = field(default_factory=dict)
    folded: set[str] = field(default_factory=set)
    processes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "processes": self.processes,
            "folded": sorted(self.folded),
            "series": [series_to_json(item) for item in self.series.values()],
        }

    @classmethod
    def from_json(cls, data: Any) -> Retired:
        if not isinstance(data, Mapping):
            raise ValueError("retired totals must be a JSON object")
        series = {}
        for raw in data.get("series", ()):
            item = series_from_json(raw)
            series[item.name] = item
        return cls(series, set(data.get("folded", ())), int(data.get("processes", 0)))


class InstanceStore:
    """One process's access to its instance's directory."""

    def __init__(
        self,
        directory: Path,
        *,
        alive: Callable[[ProcessInfo], bool] = process_is_alive,
    ) -> None:
        self.directory = directory
        self._alive = alive
        self._ready = False

    # -- files -------------------------------------------------------------------

    def _snapshot_path(self, process: ProcessInfo) -> Path:
        return self.directory / f"{SNAPSHOT_PREFIX}{process.key}.json"

    def _diagnostics_path(self, key: str) -> Path:
        return self.directory / f"{DIAGNOSTICS_PREFIX}{key}.json"

    def _prepare(self) -> None:
        if not self._ready:
            ensure_private_directory(self.directory.parent)
            ensure_private_directory(self.directory)
            self._ready = True

    def _write(self, path: Path, data: bytes) -> None:
        self._prepare()
        try:
            write_atomically(path, data)
        except FileNotFoundError:  # the directory was removed under us: make it again
            self._ready = False
            self._prepare()
            write_atomically(path, data)

    def publish(self, snapshot: ProcessSnapshot) -> None:
        """Replace this process's file with ``snapshot``."""
        data = json.dumps(snapshot.to_json(), separators=(",", ":"), allow_nan=False).encode()
        self._write(self._snapshot_path(snapshot.process), data)

    def publish_diagnostics(self, process: ProcessInfo, rings: Mapping[str, list[Any]]) -> None:
        """Replace this process's diagnostics records (errors, stalls, actions)."""
        data = {"process": {"pid": process.pid, "started": process.started, "label": process.label}, "rings": rings}
        self._write(self._diagnostics_path(process.key), json.dumps(data, default=str).encode())

    def read_diagnostics(self, own: ProcessInfo | None = None) -> dict[str, list[Any]]:
        """Every process's diagnostics records (live and exited), each tagged with
        its process, except ``own``'s (the caller has them in memory)."""
        rings: dict[str, list[Any]] = {name: [] for name in RETIRED_RING_CAPACITY}
        retired = self._read_json(self.directory / RETIRED_DIAGNOSTICS_FILE) or {}
        for name in rings:
            rings[name].extend(retired.get(name, ()))
        folded = set(retired.get("folded", ()))
        try:
            paths = sorted(self.directory.glob(f"{DIAGNOSTICS_PREFIX}*.json"))
        except OSError:
            paths = []
        for path in paths:
            key = path.name[len(DIAGNOSTICS_PREFIX) : -len(".json")]
            if (own is not None and key == own.key) or key in folded:
                continue
            data = self._read_json(path)
            if not data:
                continue
            label = data.get("process", {}).get("label")
            for name in rings:
                rings[name].extend(_tag(record, label) for record in data.get("rings", {}).get(name, ()))
        return rings

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        """A JSON object from ``path``, or None (missing, unreadable, not an object)."""
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove(self, process: ProcessInfo) -> None:
        for path in (self._snapshot_path(process), self._diagnostics_path(process.key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _snapshot_files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob(f"{SNAPSHOT_PREFIX}*.json"))
        except OSError:
            return []

    def _read_retired(self) -> Retired:
        try:
            return Retired.from_json(json.loads((self.directory / RETIRED_FILE).read_bytes()))
        except FileNotFoundError:
            return Retired()
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            _logger.warning("otel-render: %s is unreadable; starting the retired totals again", RETIRED_FILE)
            return Retired()

    @staticmethod
    def _load(path: Path) -> ProcessSnapshot:
        """One process's file; ValueError when it is not a snapshot, OSError when unreadable."""
        data = path.read_bytes()
        try:
            return ProcessSnapshot.from_json(json.loads(data))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path.name} is not a snapshot") from exc

    # -- reading the instance ------------------------------------------------------

    def read(self, own: ProcessSnapshot | None = None, attempts: int = 3) -> InstanceMetrics:
        """The instance: ``own`` (fresh, in memory) plus every other live
        process's file, plus what exited processes counted. Takes no lock."""
        for _ in range(attempts):
            retired = self._read_retired()
            live: list[ProcessSnapshot] = [own] if own is not None else []
            exited_series = dict(retired.series)
            exited = retired.processes
            vanished = False
            for path in self._snapshot_files():
                if own is not None and path == self._snapshot_path(own.process):
                    continue
                try:
                    snapshot = self._load(path)
                except FileNotFoundError:
                    vanished = True  # folded while we read: read the retired totals again
                    break
                except (OSError, ValueError):
                    continue
                if self._alive(snapshot.process):
                    live.append(snapshot)
                elif snapshot.process.key not in retired.folded:
                    exited_series = add_series(exited_series, retained_part(snapshot.series))
                    exited += 1
            if not vanished:
                return merge_instance(live, exited_series, exited)
        return merge_instance([own] if own is not None else [], self._read_retired().series)

    # -- folding exited processes ----------------------------------------------------

    def retire_exited(self) -> int:
        """Fold the files of processes that have exited into ``retired.json``.

        Returns how many were folded; 0 when another process holds the lock.
        """
        try:
            self._prepare()
            descriptor = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return 0
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            return self._fold_locked()
        finally:
            os.close(descriptor)  # releases the lock

    def _fold_locked(self) -> int:
        retired = self._read_retired()
        files = self._snapshot_files()
        existing = {path.name for path in files}
        folded_now: list[Path] = []
        already_folded: list[Path] = []
        for path in files:
            try:
                snapshot = self._load(path)
            except (OSError, ValueError):
                continue
            if self._alive(snapshot.process):
                continue
            if snapshot.process.key in retired.folded:
                already_folded.append(path)
                continue
            retired.series = add_series(retired.series, retained_part(snapshot.series))
            retired.folded.add(snapshot.process.key)
            retired.processes += 1
            folded_now.append(path)
        if folded_now:
            # Forget keys whose files are gone: they can never be read again.
            retired.folded = {key for key in retired.folded if f"{SNAPSHOT_PREFIX}{key}.json" in existing}
            data = json.dumps(retired.to_json(), separators=(",", ":"), allow_nan=False).encode()
            write_atomically(self.directory / RETIRED_FILE, data)
        if folded_now:
            self._fold_diagnostics_locked([path.name[len(SNAPSHOT_PREFIX) : -len(".json")] for path in folded_now])
        for path in folded_now + already_folded:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return len(folded_now)

    def _fold_diagnostics_locked(self, keys: list[str]) -> None:
        """Keep the newest records of exited processes in ``retired-diagnostics.json``."""
        path = self.directory / RETIRED_DIAGNOSTICS_FILE
        retired = self._read_json(path) or {}
        folded = set(retired.get("folded", ()))
        found = []
        for key in keys:
            data = self._read_json(self._diagnostics_path(key))
            if data is None or key in folded:
                continue
            found.append(self._diagnostics_path(key))
            folded.add(key)
            label = data.get("process", {}).get("label")
            for name in RETIRED_RING_CAPACITY:
                retired.setdefault(name, []).extend(
                    _tag(record, label) for record in data.get("rings", {}).get(name, ())
                )
        if not found:
            return
        for name, capacity in RETIRED_RING_CAPACITY.items():
            records = sorted(retired.get(name, ()), key=lambda record: str(record.get("timestamp", "")))
            retired[name] = records[-capacity:]
        existing = {entry.name for entry in self.directory.glob(f"{DIAGNOSTICS_PREFIX}*.json")}
        retired["folded"] = sorted(key for key in folded if f"{DIAGNOSTICS_PREFIX}{key}.json" in existing)
        write_atomically(path, json.dumps(retired, default=str).encode())
        for found_path in found:
            with contextlib.suppress(FileNotFoundError):
                found_path.unlink()

    # -- housekeeping ------------------------------------------------------------------

    def remove_directory(self) -> None:
        """Delete the whole instance directory (its owner, at exit)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def remove_abandoned(base: Path, keep: Path) -> int:
        """Delete the directories of instance runs whose owner process has gone."""
        removed = 0
        try:
            entries = list(base.iterdir())
        except OSError:
            return 0
        for entry in entries:
            if entry == keep or not entry.name.startswith("instance-"):
                continue
            try:
                _, pid, started = entry.name.split("-", 2)
                owner = ProcessInfo(int(pid), float(started))
            except ValueError:
                continue
            if not process_is_alive(owner):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed
