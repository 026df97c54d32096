"""Memory actions on this machine: what gc.collect and malloc_trim give back,
measured in a fresh process (the test runner's own heap would blur it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from otel_render.recovery import memory

WORKLOAD = textwrap.dedent(
    """
    import json, random
    from otel_render.recovery import memory
    random.seed(7)
    # 120,000 byte strings of 600-4000 bytes (above pymalloc's 512-byte limit,
    # so they come from malloc), then free 15 of every 16.
    blocks = [bytes(random.randint(600, 4000)) for _ in range(120_000)]
    kept = [block for index, block in enumerate(blocks) if index % 16 == 0]
    del blocks
    steps = memory.relieve_pressure()
    print(json.dumps([[s.step, s.rss_before, s.rss_after, s.detail] for s in steps]))
    """
)


def test_collect_then_trim_gives_freed_malloc_memory_back():
    result = subprocess.run([sys.executable, "-c", WORKLOAD], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    steps = {name: (before, after) for name, before, after, _ in json.loads(result.stdout)}
    assert memory.malloc_trim_available(), "this test machine runs glibc"
    gc_before, gc_after = steps["gc_collect"]
    trim_before, trim_after = steps["malloc_trim"]
    # ~270 MB were freed by `del`; glibc kept most of it until the trim.
    assert trim_before - trim_after > 100 * 2**20, steps
    assert trim_after < gc_before / 2, steps


def test_pressure_callbacks_run_in_order_and_a_failing_one_does_not_stop_the_rest(monkeypatch):
    monkeypatch.setattr(memory, "_callbacks", [])
    calls = []
    memory.on_memory_pressure(lambda: calls.append("first"))
    memory.on_memory_pressure(lambda: 1 / 0)

    @memory.on_memory_pressure
    def clear_cache():
        calls.append("third")

    step = memory.run_pressure_callbacks()
    assert calls == ["first", "third"]
    assert step is not None and step.detail == "3 callback(s), 1 failed"


def test_no_callbacks_no_step(monkeypatch):
    monkeypatch.setattr(memory, "_callbacks", [])
    assert memory.run_pressure_callbacks() is None
