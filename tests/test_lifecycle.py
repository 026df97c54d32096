"""Background loops across fork, and the bounded final flush."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from otel_render import lifecycle


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test gets its own registry (the real one is process-wide)."""
    registry = lifecycle._Registry()
    monkeypatch.setattr(lifecycle, "_registry", registry)
    yield registry
    for loop in registry.loops:
        loop.stop(time.monotonic() + 2)


def test_loop_ticks_in_its_thread_and_survives_a_failing_tick():
    ticks = []
    second_tick = threading.Event()

    def tick():
        ticks.append(threading.current_thread().name)
        if len(ticks) == 1:
            raise RuntimeError("first tick fails")
        second_tick.set()

    loop = lifecycle.add_loop(lifecycle.BackgroundLoop("probe", 0.01, tick))
    assert second_tick.wait(10), "the loop stopped after a failing tick"
    assert ticks[0] == "otel-render-probe"
    loop.stop(time.monotonic() + 5)
    assert not loop.running


def test_stop_is_bounded_by_the_deadline_even_when_a_tick_hangs():
    release = threading.Event()
    entered = threading.Event()

    def tick():
        entered.set()
        release.wait(30)

    loop = lifecycle.add_loop(lifecycle.BackgroundLoop("hang", 0.01, tick))
    assert entered.wait(10)
    started = time.monotonic()
    loop.stop(started + 0.2)
    assert time.monotonic() - started < 0.2 * 10
    release.set()


# Forking a multi-threaded process is exactly the situation under test.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_fresh_threads_and_runs_fork_callbacks():
    lifecycle.install(1.0, handle_sigterm=False)
    calls = []
    lifecycle.on_fork_child(lambda: calls.append(os.getpid()))
    read_end, write_end = os.pipe()
    in_child = threading.Event()

    def tick():
        if calls and calls[0] == os.getpid():
            in_child.set()

    lifecycle.add_loop(lifecycle.BackgroundLoop("forked", 0.01, tick))
    pid = os.fork()
    if pid == 0:  # child: report whether the loop ticked here, then leave at once
        ok = in_child.wait(10)
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 20)
    answer = os.read(read_end, 1) if ready else b""
    os.waitpid(pid, 0)
    os.close(read_end)
    assert answer == b"1", "the loop did not run in the forked child"
    assert calls == []  # the callback ran in the child only


class _Provider:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.release = threading.Event()

    def shutdown(self) -> None:
        self.calls += 1
        self.release.wait(self.seconds)


class SlowProvider(_Provider):
    pass


class QuickProvider(_Provider):
    pass


def test_shutdown_flushes_providers_in_parallel_under_one_deadline():
    slow, quick = SlowProvider(30), QuickProvider(0)
    lifecycle.add_provider(slow)
    lifecycle.add_provider(quick)
    report = lifecycle.shutdown(0.3)
    slow.release.set()
    assert report.seconds < 0.3 * 10
    assert report.finished == ["QuickProvider"]
    assert report.abandoned == ["SlowProvider"]
    assert quick.calls == 1 and slow.calls == 1
    # A second shutdown (atexit after an explicit call) does nothing.
    assert lifecycle.shutdown(0.3).finished == []
    assert quick.calls == 1


def test_shutdown_stops_loops_and_runs_before_flush_callbacks_first():
    order = []
    lifecycle.before_flush(lambda deadline: order.append("before"))
    loop = lifecycle.add_loop(lifecycle.BackgroundLoop("l", 10, lambda: None))

    class Recording:
        def shutdown(self):
            order.append("provider")

    lifecycle.add_provider(Recording())
    lifecycle.shutdown(2)
    assert order == ["before", "provider"]
    assert not loop.running


def test_sigterm_exits_normally_so_the_flush_runs(tmp_path):
    script = textwrap.dedent(
        """
        import atexit, os, signal, time
        from otel_render import lifecycle
        lifecycle.install(1.0)
        atexit.register(lambda: print("flushed", flush=True))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        print("not reached", flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 143
    assert "flushed" in result.stdout and "not reached" not in result.stdout


def test_an_existing_sigterm_handler_is_left_alone():
    script = textwrap.dedent(
        """
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *a: (print("app handler", flush=True), sys.exit(7)))
        from otel_render import lifecycle
        lifecycle.install(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 7 and "app handler" in result.stdout
