"""The recovery manager with injected meter values, clock and actions: what each
built-in rule does, who acts, dry-run, switches, escalation into health, and the
record every action leaves (action log, counter, span). No sleeps."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_render import diagnostics, health
from otel_render.config import Settings
from otel_render.diagnostics import Ring
from otel_render.health import HEALTHY, UNHEALTHY, HealthCheckResult
from otel_render.local.snapshot import GAUGE, InstanceMetrics, Point, Series
from otel_render.recovery import memory
from otel_render.recovery.manager import RecoveryManager, RecycleLease, Sources
from otel_render.recovery.rules import Rule
from otel_render.web.gunicorn import ROLE_MASTER, ROLE_WORKER

OTHER_PID = os.getpid() + 100_000


def view(utilization=None, db_status=None):
    series = {}
    if utilization is not None:
        series["otel_render.instance.memory.utilization"] = Series(
            "otel_render.instance.memory.utilization", GAUGE, "1", points=(Point((), utilization),)
        )
    if db_status is not None:
        series["otel_render.db.status"] = Series(
            "otel_render.db.status", GAUGE, "1", points=(Point((("db.client.connection.pool.name", "p"),), db_status),)
        )
    return InstanceMetrics(series=series, processes=(), collected_at=0.0)


class World:
    """Everything the manager reads and does, recorded."""

    def __init__(self):
        self.view = None
        self.uss = 100 * 2**20
        self.role = ROLE_WORKER
        self.calls = []
        self.states = []
        self.clock = 1000.0
        self.lease_ok = True
        self.siblings = {}

    def sources(self):
        def relieve():
            self.calls.append("relieve")
            return [memory.Reclaimed("gc_collect", 500, 400), memory.Reclaimed("malloc_trim", 400, 100)]

        def lease():
            world = self

            class Lease:
                def try_take(self, pid, now, window):
                    return world.lease_ok, (None if world.lease_ok else now - 10)

            return Lease()

        return Sources(
            view=lambda: self.view,
            own_uss=lambda: self.uss,
            sibling_uss=lambda: self.siblings,
            identity=lambda: (self.role, 1),
            scheduler_states=lambda: self.states,
            pause_schedulers=lambda owner: self.calls.append(f"pause:{owner}") or ["default"],
            resume_schedulers=lambda owner: self.calls.append(f"resume:{owner}") or ["default"],
            restart_scheduler=lambda name: self.calls.append(f"restart:{name}") or True,
            probe_database=lambda: self.calls.append("probe"),
            relieve_memory=relieve,
            recycle_lease=lease,
            recycle=lambda: self.calls.append("recycle"),
        )


@pytest.fixture
def rings(monkeypatch):
    monkeypatch.setattr(diagnostics, "actions", Ring(200))
    monkeypatch.setattr(health, "_findings", {})
    return diagnostics.actions


@pytest.fixture
def telemetry():
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    return SimpleNamespace(
        spans=spans,
        reader=reader,
        tracer=tracer_provider.get_tracer("t"),
        meter=meter_provider.get_meter("m"),
    )


def make(world, telemetry, **env):
    settings, problems = Settings.from_environ({"OTEL_RENDER_RECOVERY_COOLDOWN_S": "30", **env})
    assert problems == []
    return RecoveryManager(
        settings, sources=world.sources(), meter=telemetry.meter, tracer=telemetry.tracer, clock=lambda: world.clock
    )


def step(manager, world, seconds=5.0):
    records = manager.tick()
    world.clock += seconds
    return records


def counter_points(telemetry, name):
    data = telemetry.reader.get_metrics_data()
    points = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        points[tuple(sorted(point.attributes.items()))] = point.value
    return points


def test_memory_high_relieves_in_the_worker_that_grew_most_and_records_it(rings, telemetry):
    world = World()
    manager = make(world, telemetry)
    step(manager, world)  # baseline USS taken
    world.uss += 50 * 2**20  # this worker holds 150 MiB, the other one 110 MiB
    world.siblings = {OTHER_PID: 110 * 2**20}
    world.view = view(utilization=0.85)
    assert step(manager, world) == []  # first breach: the rule needs two
    [record] = step(manager, world)
    assert world.calls == ["relieve"]
    assert (record.rule, record.action, record.outcome) == ("memory_high", "relieve_memory", "done")
    assert record.detail["freed_bytes"] == 400
    assert rings.snapshot() == [record]
    [span] = telemetry.spans.get_finished_spans()
    assert span.name == "recovery relieve_memory"
    assert span.attributes["otel_render.recovery.outcome"] == "done"
    assert span.attributes["otel_render.recovery.freed_bytes"] == 400
    assert span.parent is None
    actions = counter_points(telemetry, "otel_render.recovery.actions")
    assert actions == {(("action", "relieve_memory"), ("outcome", "done"), ("rule", "memory_high")): 1}
    freed = counter_points(telemetry, "otel_render.recovery.memory.freed")
    assert freed == {(("action", "gc_collect"),): 100, (("action", "malloc_trim"),): 300}
    growth = counter_points(telemetry, "otel_render.process.memory.growth")
    assert growth == {(): 50 * 2**20}


def test_the_action_tracer_is_made_at_the_first_action_not_while_the_sdk_self_metrics_are_on(rings, monkeypatch):
    """The configurator builds the manager while the SDK's per-span self-metrics
    are switched on for the pipeline's own parts: a tracer made then would
    count every action span in ``otel.sdk.span.*``, which are off by default."""
    reader = InMemoryMetricReader()
    tracer_provider = TracerProvider(meter_provider=MeterProvider(metric_readers=[reader]))
    spans = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    world = World()
    settings, _ = Settings.from_environ({})
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    manager = RecoveryManager(settings, sources=world.sources(), tracer_provider=tracer_provider, clock=lambda: world.clock)
    monkeypatch.delenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED")
    step(manager, world)
    world.view = view(utilization=0.99)
    [record] = step(manager, world)
    assert (record.rule, record.outcome) == ("memory_critical", "done")
    [span] = spans.get_finished_spans()
    assert span.name == "recovery emergency" and span.instrumentation_scope.name == "otel_render.recovery"
    data = reader.get_metrics_data()
    names = {metric.name for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics} if data else set()
    assert not {name for name in names if name.startswith("otel.sdk.span.")}, names


def test_a_worker_that_did_not_grow_most_does_not_act(rings, telemetry):
    world = World()
    manager = make(world, telemetry)
    step(manager, world)
    world.siblings = {OTHER_PID: 180 * 2**20}
    world.view = view(utilization=0.9)
    step(manager, world)
    [record] = step(manager, world)
    assert world.calls == []
    assert record.outcome == "skipped"
    assert rings.snapshot() == []  # skips are counted, not logged as actions
    assert telemetry.spans.get_finished_spans() == ()


def test_memory_critical_relieves_pauses_and_recycles_once_then_resumes_when_it_clears(rings, telemetry):
    world = World()
    manager = make(world, telemetry)
    step(manager, world)
    world.uss += 300 * 2**20
    world.siblings = {OTHER_PID: 30 * 2**20}
    world.view = view(utilization=0.97)
    records = step(manager, world)
    emergency = next(record for record in records if record.rule == "memory_critical")
    assert world.calls == ["relieve", "pause:memory_critical", "recycle"]
    assert emergency.detail["recycle"] == "worker in slot 1 asked to exit gracefully"
    assert emergency.detail["paused"] == ["default"]
    world.calls.clear()
    world.view = view(utilization=0.5)
    records = step(manager, world)
    assert [(r.rule, r.action) for r in records] == [("memory_critical", "resume_schedulers")]
    assert world.calls == ["resume:memory_critical"]


def test_the_instance_lease_stops_a_second_recycle(rings, telemetry):
    world = World()
    world.lease_ok = False
    manager = make(world, telemetry)
    step(manager, world)
    world.uss += 300 * 2**20
    world.view = view(utilization=0.97)
    records = step(manager, world)
    emergency = next(record for record in records if record.rule == "memory_critical")
    assert "recycle" not in world.calls
    assert emergency.detail["recycle"] == "another worker was recycled 10 s ago"


def test_outside_gunicorn_nothing_is_recycled_and_the_master_evaluates_nothing(rings, telemetry):
    world = World()
    world.role = None
    manager = make(world, telemetry)
    step(manager, world)
    world.view = view(utilization=0.97)
    records = step(manager, world)
    emergency = next(record for record in records if record.rule == "memory_critical")
    assert emergency.detail["recycle"] == "not a gunicorn worker" and "recycle" not in world.calls
    master = World()
    master.role = ROLE_MASTER
    master.view = view(utilization=0.99)
    manager = make(master, telemetry)
    assert step(manager, master) == [] and step(manager, master) == []


def test_critical_memory_that_recovery_cannot_lower_escalates_to_an_unhealthy_memory_check(rings, telemetry):
    world = World()
    manager = make(world, telemetry, OTEL_RENDER_RECOVERY_DISABLED_ACTIONS="recycle_worker")
    step(manager, world)
    world.view = view(utilization=0.97)
    kinds = []
    for _ in range(30):  # 150 s of critical memory
        kinds += [(r.rule, r.outcome) for r in step(manager, world) if r.rule == "memory_critical"]
    assert kinds == [("memory_critical", "done"), ("memory_critical", "done"), ("memory_critical", "escalated")]
    health.register_check("memory", lambda now: HealthCheckResult(HEALTHY, 97.0, "percent", None, "at 97%"))
    try:
        result = health.registered_checks()["memory"](world.clock)
    finally:
        health.unregister_check("memory")
    assert result.status == UNHEALTHY
    assert "recovery gave up" in result.output and result.observedValue == 97.0
    escalated = {r.rule: r.action for r in rings.snapshot() if r.outcome == "escalated"}
    assert escalated == {"memory_critical": "escalate", "memory_high": "escalate"}
    # While critical acts, the high rule does not relieve a second time.
    assert world.calls.count("relieve") == 2


def test_dry_run_records_without_acting(rings, telemetry):
    world = World()
    manager = make(world, telemetry, OTEL_RENDER_RECOVERY="dry-run")
    step(manager, world)
    world.view = view(utilization=0.97, db_status=0)
    records = step(manager, world)
    assert world.calls == []
    assert {(r.rule, r.outcome) for r in records} == {("memory_critical", "dry_run"), ("database_down", "dry_run")}
    assert len(rings.snapshot()) == 2


def test_database_down_asks_the_probe_and_pauses_until_it_is_back_and_only_resumes_its_own_pause(rings, telemetry):
    world = World()
    manager = make(world, telemetry)
    world.view = view(db_status=0)
    [down] = step(manager, world)
    assert (down.rule, down.outcome) == ("database_down", "done")
    assert world.calls == ["probe", "pause:database_down"]
    world.calls.clear()
    world.view = view(db_status=1)
    [back] = step(manager, world)
    assert back.action == "resume_schedulers" and world.calls == ["resume:database_down"]


def test_switched_off_actions_are_not_taken(rings, telemetry):
    world = World()
    manager = make(
        world, telemetry, OTEL_RENDER_RECOVERY_DISABLED_ACTIONS="probe_database,pause_schedulers,relieve_memory"
    )
    step(manager, world)
    world.view = view(utilization=0.97, db_status=0)
    records = step(manager, world)
    assert world.calls == ["recycle"]
    assert {r.rule: r.outcome for r in records}["database_down"] == "skipped"


def test_a_dead_scheduler_is_restarted_after_two_evaluations(rings, telemetry):
    world = World()
    dead = SimpleNamespace(name="default", runner=True, state="dead", jobs=())
    standby = SimpleNamespace(name="reports", runner=False, state="dead", jobs=())
    world.states = [dead, standby]
    manager = make(world, telemetry)
    assert step(manager, world) == []
    [record] = step(manager, world)
    assert world.calls == ["restart:default"]
    assert record.detail["restarted"] == {"default": True}


def test_a_sustained_leak_marks_memory_degraded_and_clears(rings, telemetry):
    world = World()
    manager = make(world, telemetry, OTEL_RENDER_RECOVERY_LEAK_WINDOW_S="60", OTEL_RENDER_RECOVERY_LEAK_KIB_S="10")
    records = []
    for _ in range(15):  # 75 s, growing 100 KiB/s
        records += step(manager, world)
        world.uss += 500 * 1024
    [leak] = [r for r in records if r.rule == "leak_suspected"]
    assert leak.detail["kib_per_s"] == pytest.approx(100, rel=0.01)
    finding = manager._memory_finding(world.clock)
    assert finding is not None and finding.status == "degraded" and "leak suspected" in finding.output
    for _ in range(20):  # flat again
        step(manager, world)
    assert manager._memory_finding(world.clock) is None


def test_rules_added_by_code_run_registered_actions(rings, telemetry):
    from otel_render.recovery import Outcome

    world = World()
    manager = make(world, telemetry)
    manager.add_action("shed_load", lambda decision, now: Outcome("done", {"shed": True}))
    manager.engine.add_rule(Rule("early_warning", "memory.utilization", 0.5, "shed_load", cooldown_s=10))
    world.view = view(utilization=0.6)
    [record] = step(manager, world)
    assert (record.rule, record.outcome, record.detail["shed"]) == ("early_warning", "done", True)


def test_an_action_that_raises_is_recorded_as_failed(rings, telemetry):
    world = World()
    manager = make(world, telemetry)

    def broken():
        raise OSError("no memory to free memory")

    manager.sources.relieve_memory = broken
    step(manager, world)
    world.uss += 10
    world.view = view(utilization=0.85)
    step(manager, world)
    [record] = step(manager, world)
    assert record.outcome == "failed" and "no memory to free memory" in record.detail["error"]
    [span] = telemetry.spans.get_finished_spans()
    assert span.status.status_code.name == "ERROR"


def test_recycle_lease_allows_one_recycle_per_window(tmp_path):
    lease = RecycleLease(tmp_path / "run" / "recycle.json")
    assert lease.try_take(1, 1000.0, 300) == (True, None)
    assert lease.try_take(2, 1100.0, 300) == (False, 1000.0)
    assert lease.try_take(2, 1300.0, 300) == (True, 1000.0)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
