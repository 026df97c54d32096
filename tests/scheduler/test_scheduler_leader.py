"""The leader locks and the election on top of them: record locks across real
processes, the election's schedule with a fake clock, the handover record."""

from __future__ import annotations

import os

from support.scheduler import LockContender

from otel_render.scheduler.leader import (
    Election,
    InstanceLock,
    ProgressStore,
    advisory_key,
    normalize_postgres_url,
)


def test_one_process_holds_the_instance_lock_and_its_death_frees_it(tmp_path):
    lock = InstanceLock(tmp_path)
    assert lock.try_acquire()
    assert lock.holder().pid == os.getpid()
    contender = LockContender(tmp_path)
    try:
        assert contender.try_lock() == "busy"
        lock.release()
        assert contender.try_lock() == "got"
        assert not lock.try_acquire()
        assert lock.holder().pid == contender.pid
    finally:
        contender.kill()
    # SIGKILL: the kernel dropped the dead process's lock.
    assert lock.try_acquire()
    lock.release()


def test_a_lock_taken_before_fork_is_not_shared_with_the_child(tmp_path):
    lock = InstanceLock(tmp_path)
    assert lock.try_acquire()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it must not hold the parent's lock
        try:
            lock.after_fork_in_child()
            os.write(write_end, b"got" if lock.try_acquire() else b"busy")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 10)
    os.waitpid(pid, 0)
    os.close(read_end)
    assert answer == b"busy"
    # The child closing its copy of the descriptor did not release ours.
    contender = LockContender(tmp_path)
    try:
        assert contender.try_lock() == "busy"
    finally:
        contender.kill()
    lock.release()


class FakeLock:
    def __init__(self, name, free=True, local=True):
        self.local = local
        self.name = name
        self.free = free
        self.held = False
        self.lost = False
        self.attempts = 0

    def try_acquire(self):
        self.attempts += 1
        if self.held or self.free:
            self.held = True
            return True
        return False

    def still_held(self):
        if self.lost:
            self.held = False
        return self.held

    def release(self):
        self.held = False

    def after_fork_in_child(self):
        self.held = False

    def describe(self):
        return self.name


def test_standby_tries_once_per_poll_and_leads_when_every_lock_is_taken():
    instance, database = FakeLock("instance"), FakeLock("database", free=False, local=False)
    election = Election([instance, database], poll_s=2)
    assert not election.tick(100)
    assert instance.held  # first in line for the database lock
    assert not election.tick(101)
    assert database.attempts == 1
    database.free = True
    assert not election.tick(101.9)
    assert election.tick(102)
    assert election.since == 102


def test_starting_a_scheduler_tries_only_local_locks_and_leaves_the_database_to_the_tick():
    instance, database = FakeLock("instance"), FakeLock("database", local=False)
    election = Election([instance, database], poll_s=30)
    assert not election.try_now(0)
    assert instance.held and database.attempts == 0
    assert election.tick(0.1)  # right away, not a poll interval later
    assert database.attempts == 1


def test_the_leader_steps_down_when_a_lock_is_lost_and_errors_count_as_not_acquired():
    database = FakeLock("database", local=False)
    election = Election([FakeLock("instance"), database], poll_s=1)
    assert not election.try_now(0)
    assert election.tick(0)
    database.lost = True
    assert election.tick(0.5)  # checked once per poll
    assert not election.tick(1)

    class Broken(FakeLock):
        def try_acquire(self):
            raise OSError("read-only file system")

    broken = Election([Broken("instance")], poll_s=1)
    assert not broken.try_now(0)
    assert not broken.tick(5)


def test_progress_record_round_trip_and_other_instances_are_ignored(tmp_path):
    store = ProgressStore(tmp_path, "instance-a")
    assert store.read("BackgroundScheduler") is None
    store.write("BackgroundScheduler", {"tick": 10.5})
    store.write("Reports", {"nightly": 99.0})
    assert store.read("BackgroundScheduler") == {"tick": 10.5}
    assert ProgressStore(tmp_path, "instance-a").read("Reports") == {"nightly": 99.0}
    assert ProgressStore(tmp_path, "instance-b").read("Reports") is None
    (tmp_path / "scheduler-progress.json").write_text("{not json")
    assert store.read("Reports") is None


def test_advisory_key_and_url_normalization():
    assert advisory_key("srv-1") == advisory_key("srv-1") != advisory_key("srv-2")
    assert -(2**63) <= advisory_key("srv-1") < 2**63
    assert normalize_postgres_url("postgres://u:p@h/db") == "postgresql://u:p@h/db"
    assert normalize_postgres_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
