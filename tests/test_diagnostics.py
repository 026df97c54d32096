"""Rings, error-context capture (scrubbed, with system state) and request context."""

from __future__ import annotations

import threading

from otel_render import diagnostics, request_context
from otel_render.diagnostics import RequestInfo, Ring


def test_ring_keeps_the_most_recent_and_counts_all():
    ring: Ring[int] = Ring(3)
    for number in range(5):
        ring.append(number)
    assert ring.snapshot() == [2, 3, 4]
    assert ring.total == 5
    ring.reset_after_fork()
    assert ring.snapshot() == [] and ring.total == 0


def test_error_context_is_scrubbed_and_carries_system_state(monkeypatch):
    monkeypatch.setattr(diagnostics, "errors", Ring(10))
    monkeypatch.setattr(diagnostics, "_system_state_sources", {})
    diagnostics.add_system_state("db", lambda: {"databaseStatus": False, "activeConnections": 3})
    diagnostics.add_system_state("broken", lambda: 1 / 0)
    try:
        raise ValueError("login failed for postgresql://app:hunter2@db/app [parameters: {'pw': 'p4ss'}]")
    except ValueError as exc:
        context = diagnostics.capture_error_context(
            exc,
            correlation_id="req-1",
            trace_id="ab" * 16,
            request=RequestInfo("GET", "/items/1", "/items/<int:id>", {"accept": "*/*"}, None, "curl/8"),
            now=0.0,
        )
    assert diagnostics.errors.snapshot() == [context]
    data = context.to_dict()
    assert data["correlationId"] == "req-1"
    assert data["timestamp"] == "1970-01-01T00:00:00.000Z"
    assert data["error"]["type"] == "builtins.ValueError"
    for secret in ("hunter2", "p4ss"):
        assert secret not in data["error"]["message"] and secret not in data["error"]["stack"]
    assert "test_error_context_is_scrubbed" in data["error"]["stack"]
    assert data["system"] == {"databaseStatus": False, "activeConnections": 3}
    assert data["request"]["route"] == "/items/<int:id>"


def test_thread_stack_shows_where_another_thread_waits():
    started, release = threading.Event(), threading.Event()

    def stuck_in_here():
        started.set()
        release.wait(30)

    thread = threading.Thread(target=stuck_in_here)
    thread.start()
    try:
        assert started.wait(10)
        stack = diagnostics.thread_stack(thread.ident)
        assert stack is not None and "stuck_in_here" in stack
    finally:
        release.set()
        thread.join()
    assert diagnostics.thread_stack(thread.ident) is None


def test_db_queries_add_up_on_the_current_record_only():
    request_context.add_db_query(0.5)  # no current record: ignored
    record = request_context.WorkRecord(correlation_id="c")
    token = request_context.begin(record)
    try:
        request_context.add_db_query(0.25)
        request_context.add_db_query(0.5)
        assert request_context.current() is record
    finally:
        request_context.end(token)
    assert (record.db_queries, record.db_time_s) == (2, 0.75)
    assert request_context.current() is None
