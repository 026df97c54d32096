"""The per-instance snapshot store on real files: publish, read the live
processes, fold the exited ones so totals never go backwards, and keep the
directory private."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from otel_render.instance import ensure_private_directory, process_start_time, run_directory
from otel_render.local.snapshot import SUM, Point, ProcessInfo, ProcessSnapshot, Series
from otel_render.local.store import RETIRED_FILE, InstanceStore


class Liveness:
    """Which pids count as running (a test stands in for the process table)."""

    def __init__(self, *alive: int) -> None:
        self.alive = set(alive)

    def __call__(self, info: ProcessInfo) -> bool:
        return info.pid in self.alive


def snapshot(pid: int, requests: float, active: float = 0, collected_at: float = 1.0) -> ProcessSnapshot:
    series = {
        "app.requests": Series("app.requests", SUM, "", True, (Point((), value=requests),)),
        "http.server.active_requests": Series(
            "http.server.active_requests", SUM, "", False, (Point((), value=active),)
        ),
    }
    return ProcessSnapshot(ProcessInfo(pid, 1000.0 + pid, f"w{pid}"), collected_at, series)


def total(store: InstanceStore, own: ProcessSnapshot | None = None) -> float:
    return sum(point.value for point in store.read(own).points("app.requests"))


@pytest.fixture
def liveness():
    return Liveness(1, 2, 3)


@pytest.fixture
def store(tmp_path, liveness):
    return InstanceStore(tmp_path / "base" / "instance-1-1000", alive=liveness)


def test_the_serving_process_merges_its_fresh_snapshot_with_the_others_files(store):
    store.publish(snapshot(2, 5, active=1))
    store.publish(snapshot(3, 7, active=2))
    store.publish(snapshot(1, 100))  # our own stale file is ignored: the fresh one wins
    view = store.read(snapshot(1, 1, active=1))
    assert sum(point.value for point in view.points("app.requests")) == 13
    assert sum(point.value for point in view.points("http.server.active_requests")) == 4
    assert {item.process.pid for item in view.processes} == {1, 2, 3}


def test_an_exited_workers_requests_stay_in_the_totals_and_its_state_goes(store, liveness):
    store.publish(snapshot(2, 5, active=1))
    store.publish(snapshot(3, 7, active=1))
    own = snapshot(1, 1)
    assert total(store, own) == 13

    liveness.alive.discard(2)  # worker 2 was recycled
    view = store.read(own)  # not folded yet: counted from its last file
    assert sum(point.value for point in view.points("app.requests")) == 13
    assert sum(point.value for point in view.points("http.server.active_requests")) == 1
    assert view.retired_processes == 1

    assert store.retire_exited() == 1
    assert not list(store.directory.glob("p-2-*"))
    assert total(store, own) == 13
    assert store.retire_exited() == 0  # nothing new: never counted twice

    liveness.alive.discard(3)
    store.retire_exited()
    assert total(store, own) == 13
    assert store.read(own).retired_processes == 2


def test_a_fold_interrupted_before_deleting_the_file_is_not_counted_twice(store, liveness):
    store.publish(snapshot(2, 5))
    liveness.alive.discard(2)
    assert store.retire_exited() == 1
    # Put the folded file back, as if the process had died between writing
    # retired.json and deleting the file.
    store.publish(snapshot(2, 5))
    assert total(store) == 5
    assert store.retire_exited() == 0
    assert total(store) == 5
    assert not list(store.directory.glob("p-2-*"))


def test_folding_waits_for_no_one(store, liveness):
    store.publish(snapshot(2, 5))
    liveness.alive.discard(2)
    holder = os.open(store.directory / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert store.retire_exited() == 0  # another process is folding: skip, don't wait
        assert total(store) == 5
    finally:
        os.close(holder)
    assert store.retire_exited() == 1


def test_a_corrupt_file_is_skipped_and_a_corrupt_retired_file_restarts_the_totals(store, caplog):
    store.publish(snapshot(2, 5))
    (store.directory / "p-9-1009.00.json").write_text("{not json")
    assert total(store) == 5
    (store.directory / RETIRED_FILE).write_text("[]")
    assert total(store) == 5


def test_diagnostics_records_of_exited_workers_are_kept(store, liveness):
    error = {"timestamp": "2026-01-01T00:00:01.000Z", "error": {"message": "boom"}}
    store.publish(snapshot(2, 1))
    store.publish_diagnostics(ProcessInfo(2, 1002.0, "w2"), {"errors": [error], "stalls": [], "actions": []})
    assert store.read_diagnostics(ProcessInfo(1, 1001.0))["errors"] == [{**error, "process": "w2"}]
    liveness.alive.discard(2)
    store.retire_exited()
    assert not list(store.directory.glob("d-2-*"))
    assert store.read_diagnostics(ProcessInfo(1, 1001.0))["errors"] == [{**error, "process": "w2"}]


def test_the_directory_is_private_and_a_planted_symlink_is_refused(tmp_path):
    target = tmp_path / "private"
    ensure_private_directory(target)
    assert (target.stat().st_mode & 0o777) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / "planted"
    planted.symlink_to(elsewhere)
    with pytest.raises(PermissionError):
        ensure_private_directory(planted)


def test_published_files_are_readable_by_the_owner_only(store):
    store.publish(snapshot(2, 5))
    (path,) = store.directory.glob("p-2-*")
    assert (path.stat().st_mode & 0o777) == 0o600


def test_directories_of_runs_whose_owner_has_gone_are_removed(tmp_path):
    base = tmp_path / "base"
    ours = run_directory(base, os.getpid(), process_start_time(os.getpid()))
    gone = run_directory(base, 2**22 + 12345, 1000.0)  # no such pid
    for directory in (ours, gone):
        directory.mkdir(parents=True)
    assert InstanceStore.remove_abandoned(base, keep=Path("/nonexistent")) == 1
    assert ours.exists() and not gone.exists()


def test_a_directory_removed_under_a_running_process_is_made_again(store):
    store.publish(snapshot(2, 5))
    store.remove_directory()
    store.publish(snapshot(2, 6))
    assert total(store) == 6
