"""The recovery manager: evaluates the rules on an interval in each process
and carries out what they decide, recording every action.

Built-in rules (thresholds from ``OTEL_RENDER_MEMORY_WARN_PERCENT`` and
``OTEL_RENDER_MEMORY_CRITICAL_PERCENT``, shared with the health model):

==================== ============================== ====================================
rule                 fires when                     action
==================== ============================== ====================================
memory_high          instance memory >= 80 %        relieve memory in the worker that grew most
memory_critical      instance memory >= 95 %        relieve, pause schedulers, recycle that
                                                    worker (gunicorn); resume when it clears
leak_suspected       own USS grows steadily         mark memory degraded, log allocation growth
database_down        a pool's database is down      ask the probe to run now, pause schedulers;
                                                    resume when it is back
scheduler_unhealthy  a scheduler run here is dead   ask the supervisor to restart it
                     or has overdue jobs
==================== ============================== ====================================

Every action is a short span ``recovery <action>`` (a trace of its own), a
count on ``otel_render.recovery.actions`` (rule, action, outcome), an entry in
the diagnostics action log and one log line. Instance-wide memory rules fire
in every worker, but only the worker holding the most memory of its own (USS,
read from ``/proc`` at decision time) acts, so two workers never collect and
trim at once; at most one worker of the instance is
recycled per ``OTEL_RENDER_RECOVERY_RECYCLE_COOLDOWN_S`` (a lease in the
instance directory), and a replacement worker starts from its own baseline, so
it is not the one chosen next.

The manager never runs in the gunicorn master (it serves no request and runs
no job) and never on a request thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import StatusCode

from otel_render import diagnostics, health
from otel_render.config import Settings
from otel_render.diagnostics import ActionRecord, utc_now_iso
from otel_render.health import DEGRADED, UNHEALTHY, HealthCheckResult
from otel_render.local.snapshot import InstanceMetrics
from otel_render.recovery import memory, signals
from otel_render.recovery.rules import ESCALATE, FIRE, RECOVER, ActionBudget, Decision, LeakDetector, Rule, RuleEngine
from otel_render.version import __version__
from otel_render.web import gunicorn

_logger = logging.getLogger("otel_render.recovery")

DONE, FAILED, SKIPPED, DRY_RUN, ESCALATED = "done", "failed", "skipped", "dry_run", "escalated"

# Built-in actions that can be switched off (OTEL_RENDER_RECOVERY_DISABLED_ACTIONS).
RELIEVE_MEMORY = "relieve_memory"
RECYCLE_WORKER = "recycle_worker"
PAUSE_SCHEDULERS = "pause_schedulers"
PROBE_DATABASE = "probe_database"
RESTART_SCHEDULERS = "restart_schedulers"
BUILTIN_ACTIONS = (RELIEVE_MEMORY, RECYCLE_WORKER, PAUSE_SCHEDULERS, PROBE_DATABASE, RESTART_SCHEDULERS)


def builtin_rules(settings: Settings) -> list[Rule]:
    cooldown = settings.recovery_cooldown_s
    return [
        Rule(
            "memory_high",
            signals.MEMORY_UTILIZATION,
            settings.memory_warn_percent / 100,
            "relieve_memory",
            for_evaluations=2,
            cooldown_s=cooldown,
            description="instance memory at or above the warning threshold",
        ),
        Rule(
            "memory_critical",
            signals.MEMORY_UTILIZATION,
            settings.memory_critical_percent / 100,
            "emergency",
            for_evaluations=1,
            cooldown_s=cooldown,
            escalate_after=2,
            recover_action="resume_schedulers",
            description="instance memory at or above the critical threshold",
        ),
        Rule(
            "leak_suspected",
            signals.MEMORY_LEAK,
            1,
            "report_leak",
            cooldown_s=settings.recovery_leak_window_s,
            escalate_after=10**9,  # reporting is the action: it never escalates
            recover_action="clear_leak",
            description="this worker's own memory grows steadily",
        ),
        Rule(
            "database_down",
            signals.DATABASE_UP,
            0,
            "database_down",
            above=False,
            cooldown_s=30,
            escalate_after=10**9,  # the probe's backoff governs retries
            recover_action="resume_schedulers",
            description="a database stopped answering",
        ),
        Rule(
            "scheduler_unhealthy",
            signals.SCHEDULERS_UNHEALTHY,
            1,
            "restart_schedulers",
            for_evaluations=2,
            cooldown_s=60,
            description="a scheduler run here is dead or has overdue jobs",
        ),
    ]


@dataclass
class Outcome:
    """What carrying out one decision did."""

    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)


class RecycleLease:
    """At most one memory recycle per instance per window: a small JSON file in
    the instance directory, read and written under ``flock``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def try_take(self, pid: int, now: float, window_s: float) -> tuple[bool, float | None]:
        """Take the lease; returns (taken, when the last recycle was)."""
        import fcntl  # pylint: disable=import-outside-toplevel

        from otel_render.instance import ensure_private_directory  # pylint: disable=import-outside-toplevel

        ensure_private_directory(self.path.parent)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            raw = os.pread(descriptor, 4096, 0)
            try:
                last = float(json.loads(raw)["at"]) if raw else None
            except (ValueError, KeyError, TypeError):
                last = None
            if last is not None and now - last < window_s:
                return False, last
            payload = json.dumps({"pid": pid, "at": now}).encode()
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, payload, 0)
            return True, last
        finally:
            os.close(descriptor)


@dataclass
class Sources:
    """Where the manager reads and acts; tests replace any of these."""

    view: Callable[[], InstanceMetrics | None] = lambda: None
    own_uss: Callable[[], int | None] = lambda: _own_uss()
    sibling_uss: Callable[[], dict[int, int]] = lambda: _sibling_uss()
    identity: Callable[[], tuple[str | None, int | None]] = gunicorn.identity
    scheduler_states: Callable[[], Sequence[Any]] = lambda: _scheduler_api().states()
    pause_schedulers: Callable[[str], list[str]] = lambda owner: _scheduler_api().pause_all(owner)
    resume_schedulers: Callable[[str], list[str]] = lambda owner: _scheduler_api().resume_all(owner)
    restart_scheduler: Callable[[str], bool] = lambda name: _scheduler_api().restart(name)
    probe_database: Callable[[], None] = lambda: _db_api().request_probe()
    relieve_memory: Callable[[], list[memory.Reclaimed]] = memory.relieve_pressure
    recycle_lease: Callable[[], RecycleLease | None] = lambda: None
    recycle: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)


def _own_uss() -> int | None:
    try:
        return memory.uss_bytes()
    except Exception:  # pylint: disable=broad-except
        return None


def _sibling_uss() -> dict[int, int]:
    """USS of the other workers of this gunicorn master, read now (``/proc``).

    Read at decision time rather than from the published snapshots, which can
    be an interval old: the worker that just took a large request must be
    the one that acts."""
    master = gunicorn.master_pid()
    if master is None or master == os.getpid():
        return {}
    import psutil  # pylint: disable=import-outside-toplevel

    sizes: dict[int, int] = {}
    try:
        children = psutil.Process(master).children()
    except (psutil.Error, OSError):
        return {}
    for child in children:
        if child.pid == os.getpid():
            continue
        try:
            sizes[child.pid] = child.memory_full_info().uss
        except (psutil.Error, OSError, AttributeError):
            continue
    return sizes


def _scheduler_api() -> Any:
    import otel_render.scheduler as scheduler  # pylint: disable=import-outside-toplevel

    return scheduler


def _db_api() -> Any:
    import otel_render.db as db  # pylint: disable=import-outside-toplevel

    return db


class RecoveryManager:
    """Rules, their state, and the actions; :meth:`tick` is one evaluation."""

    def __init__(
        self,
        settings: Settings,
        *,
        sources: Sources | None = None,
        meter: Meter | None = None,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], float] = time.time,
        rules: Sequence[Rule] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.sources = sources or Sources()
        self.clock = clock
        self.dry_run = settings.recovery == "dry-run"
        self.disabled = set(settings.recovery_disabled_actions)
        self.engine = RuleEngine(builtin_rules(settings) if rules is None else rules)
        self.budget = ActionBudget(limit=10, window_s=60)
        self.leak = LeakDetector(
            window_s=settings.recovery_leak_window_s,
            threshold_bytes_per_s=settings.recovery_leak_kib_s * 1024,
            min_samples=max(5, int(settings.recovery_leak_window_s / max(settings.recovery_interval_s, 0.1) / 2)),
        )
        self._tracer = tracer
        self._tracer_provider = tracer_provider
        self._actions_counter = None
        self._freed_counter = None
        if meter is not None:
            self._actions_counter = meter.create_counter(
                "otel_render.recovery.actions", unit="{action}", description="Actions taken by the recovery manager."
            )
            self._freed_counter = meter.create_counter(
                "otel_render.recovery.memory.freed", unit="By", description="Bytes given back by memory actions."
            )
            meter.create_observable_gauge(
                signals.GROWTH_METRIC,
                [self._observe_growth],
                unit="By",
                description="Memory unique to the process (USS) above its post-start baseline.",
            )
        self._actions: dict[str, Callable[[Decision, float], Outcome]] = {
            "relieve_memory": self._relieve_memory,
            "emergency": self._emergency,
            "report_leak": self._report_leak,
            "clear_leak": self._clear_leak,
            "database_down": self._database_down,
            "resume_schedulers": self._resume_schedulers,
            "restart_schedulers": self._restart_schedulers,
        }
        self._lock = threading.Lock()
        self._reset_process_state()
        health.add_finding("memory", "recovery", self._memory_finding)
        health.add_finding("schedulers", "recovery", self._schedulers_finding)

    def _reset_process_state(self) -> None:
        self.baseline_uss: int | None = None
        self.last_uss: int | None = None
        self.view: InstanceMetrics | None = None
        self._leak_note: str | None = None
        self._escalations: dict[str, Decision] = {}
        self._trace_snapshot: Any = None

    # -- code API -------------------------------------------------------------------

    def add_action(self, name: str, action: Callable[[Decision, float], Outcome]) -> None:
        """Register an action a rule added by code can name."""
        self._actions[name] = action

    # -- the loop -------------------------------------------------------------------

    def tick(self) -> list[ActionRecord]:
        """One evaluation: read signals, decide, act, record. Never raises."""
        role, _ = self.sources.identity()
        if role == gunicorn.ROLE_MASTER or self.settings.recovery == "off":
            return []
        with self._lock:
            now = self.clock()
            self._sample_own_memory(now)
            self.view = self.sources.view()
            count, _ = self._unhealthy_schedulers()
            values = signals.read_signals(self.view, leak_suspected=self.leak.suspected(), unhealthy_schedulers=count)
            records = []
            for decision in self.engine.evaluate(values, now):
                records.extend(self._carry_out(decision, now))
            return records

    def _sample_own_memory(self, now: float) -> None:
        uss = self.sources.own_uss()
        if uss is None:
            return
        if self.baseline_uss is None:
            self.baseline_uss = uss
        self.last_uss = uss
        self.leak.add(now, uss)

    def own_growth(self) -> float:
        if self.baseline_uss is None or self.last_uss is None:
            return 0.0
        return float(max(0, self.last_uss - self.baseline_uss))

    def _observe_growth(self, _options: CallbackOptions) -> list[Observation]:
        if self.baseline_uss is None:
            return []
        return [Observation(self.own_growth())]

    def _unhealthy_schedulers(self) -> tuple[int | None, list[str]]:
        try:
            return signals.unhealthy_schedulers(self.sources.scheduler_states())
        except Exception:  # pylint: disable=broad-except
            return None, []

    def _rule_active(self, name: str) -> bool:
        try:
            return self.engine.state(name).active
        except KeyError:
            return False

    def _grew_most(self) -> bool:
        """Whether this worker holds the most memory of its own among the
        instance's workers (a fresh replacement holds little, so it is not
        chosen next)."""
        own = self.sources.own_uss()
        if own is None:
            return False
        self.last_uss = own
        return signals.grew_most(os.getpid(), float(own), {pid: float(uss) for pid, uss in self.sources.sibling_uss().items()})

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer of the action spans, from ``tracer_provider`` (else the
        global one), made at the first action rather than at construction: the
        configurator builds the manager while the SDK's per-span self-metrics
        are switched on for the pipeline's own parts, and a tracer made then
        would count every span it starts in ``otel.sdk.span.*``."""
        if self._tracer is None:
            self._tracer = trace.get_tracer("otel_render.recovery", __version__, tracer_provider=self._tracer_provider)
        return self._tracer

    # -- carrying out -------------------------------------------------------------------

    def _carry_out(self, decision: Decision, now: float) -> list[ActionRecord]:
        rule = decision.rule
        if decision.kind == ESCALATE:
            self._escalations[rule.name] = decision
            return [self._record(decision, "escalate", Outcome(ESCALATED, {"reason": decision.reason}), now)]
        if decision.kind == RECOVER:
            self._escalations.pop(rule.name, None)
        action = decision.action
        if action is None:
            return []
        handler = self._actions.get(action)
        if handler is None:
            return [self._record(decision, action, Outcome(FAILED, {"error": "no such action"}), now)]
        if self.dry_run:
            return [self._record(decision, action, Outcome(DRY_RUN, {"reason": decision.reason}), now)]
        if decision.kind == FIRE and not self.budget.try_take(now):
            return [self._record(decision, action, Outcome(SKIPPED, {"reason": "action budget exhausted"}), now)]
        started = time.monotonic()
        try:
            outcome = handler(decision, now)
        except Exception as exc:  # pylint: disable=broad-except
            outcome = Outcome(FAILED, {"error": f"{type(exc).__name__}: {exc}"})
        outcome.detail.setdefault("seconds", round(time.monotonic() - started, 4))
        return [self._record(decision, action, outcome, now)]

    def _record(self, decision: Decision, action: str, outcome: Outcome, now: float) -> ActionRecord:
        """Counter, span, action log and log line for one action."""
        rule = decision.rule
        detail = {"kind": decision.kind, "value": round(decision.value, 4), **outcome.detail}
        record = ActionRecord(
            timestamp=utc_now_iso(now), rule=rule.name, action=action, outcome=outcome.outcome, detail=detail
        )
        if self._actions_counter is not None:
            self._actions_counter.add(1, {"rule": rule.name, "action": action, "outcome": outcome.outcome})
        if outcome.outcome == SKIPPED:
            _logger.debug("otel-render: recovery %s/%s skipped: %s", rule.name, action, detail)
            return record
        diagnostics.actions.append(record)
        attributes = {
            "otel_render.recovery.rule": rule.name,
            "otel_render.recovery.action": action,
            "otel_render.recovery.outcome": outcome.outcome,
            "otel_render.recovery.value": float(decision.value),
            "otel_render.recovery.reason": decision.reason,
        }
        if "freed_bytes" in detail:
            attributes["otel_render.recovery.freed_bytes"] = int(detail["freed_bytes"])
        span = self.tracer.start_span(f"recovery {action}", context=trace.set_span_in_context(trace.INVALID_SPAN), attributes=attributes)
        if outcome.outcome in (FAILED, ESCALATED):
            span.set_status(StatusCode.ERROR, str(detail.get("error") or detail.get("reason") or outcome.outcome))
        span.end()
        level = logging.WARNING if outcome.outcome in (FAILED, ESCALATED) else logging.INFO
        _logger.log(
            level,
            "otel-render: recovery %s: %s -> %s (%s)",
            rule.name,
            action,
            outcome.outcome,
            json.dumps(detail, default=str, sort_keys=True),
        )
        return record

    # -- actions ---------------------------------------------------------------------------

    def _relieve(self) -> Outcome:
        if RELIEVE_MEMORY in self.disabled:
            return Outcome(SKIPPED, {"reason": f"{RELIEVE_MEMORY} is switched off"})
        steps = self.sources.relieve_memory()
        freed = 0
        for step in steps:
            freed += step.freed
            if self._freed_counter is not None:
                self._freed_counter.add(step.freed, {"action": step.step})
        return Outcome(
            DONE,
            {
                "freed_bytes": freed,
                "steps": [
                    {"step": step.step, "freed_bytes": step.freed, "rss_after": step.rss_after, "detail": step.detail}
                    for step in steps
                ],
            },
        )

    def _relieve_memory(self, decision: Decision, now: float) -> Outcome:
        if self._rule_active("memory_critical"):
            return Outcome(SKIPPED, {"reason": "memory_critical acts"})
        if not self._grew_most():
            return Outcome(SKIPPED, {"reason": "another worker grew more"})
        return self._relieve()

    def _emergency(self, decision: Decision, now: float) -> Outcome:
        if not self._grew_most():
            return Outcome(SKIPPED, {"reason": "another worker grew more"})
        outcome = self._relieve()
        detail: dict[str, Any] = {"relieve": outcome.outcome, **{k: v for k, v in outcome.detail.items() if k == "freed_bytes"}}
        if PAUSE_SCHEDULERS not in self.disabled:
            detail["paused"] = self.sources.pause_schedulers(decision.rule.name)
        detail["recycle"] = self._recycle(now)
        return Outcome(DONE, detail)

    def _recycle(self, now: float) -> str:
        """Gracefully recycle this worker, if it is one and the instance's lease allows."""
        if RECYCLE_WORKER in self.disabled:
            return "switched off"
        role, slot = self.sources.identity()
        if role != gunicorn.ROLE_WORKER:
            return "not a gunicorn worker"
        lease = self.sources.recycle_lease()
        if lease is not None:
            taken, last = lease.try_take(os.getpid(), now, self.settings.recovery_recycle_cooldown_s)
            if not taken:
                return f"another worker was recycled {now - (last or now):.0f} s ago"
        # gunicorn's SIGTERM for a worker: stop accepting, finish the requests
        # in flight, exit; the master starts a fresh worker in this slot.
        self.sources.recycle()
        return f"worker in slot {slot} asked to exit gracefully"

    def _report_leak(self, decision: Decision, now: float) -> Outcome:
        slope = self.leak.slope() or 0.0
        self._leak_note = (
            f"leak suspected in pid {os.getpid()}: its memory grew {slope / 1024:.0f} KiB/s "
            f"over {self.settings.recovery_leak_window_s:.0f} s"
        )
        detail: dict[str, Any] = {"kib_per_s": round(slope / 1024, 1)}
        if tracemalloc.is_tracing():
            detail["top_growth"] = self._allocation_growth()
        else:
            detail["hint"] = "set PYTHONTRACEMALLOC=1 to see which lines allocate"
        return Outcome(DONE, detail)

    def _allocation_growth(self) -> list[str]:
        snapshot = tracemalloc.take_snapshot()
        previous, self._trace_snapshot = self._trace_snapshot, snapshot
        if previous is None:
            return [str(stat) for stat in snapshot.statistics("lineno")[:5]]
        return [str(stat) for stat in snapshot.compare_to(previous, "lineno")[:5]]

    def _clear_leak(self, decision: Decision, now: float) -> Outcome:
        self._leak_note = None
        return Outcome(DONE, {})

    def _database_down(self, decision: Decision, now: float) -> Outcome:
        detail: dict[str, Any] = {}
        if PROBE_DATABASE not in self.disabled:
            self.sources.probe_database()
            detail["probe"] = "requested"
        if PAUSE_SCHEDULERS not in self.disabled:
            detail["paused"] = self.sources.pause_schedulers(decision.rule.name)
        return Outcome(DONE if detail else SKIPPED, detail or {"reason": "its actions are switched off"})

    def _resume_schedulers(self, decision: Decision, now: float) -> Outcome:
        resumed = self.sources.resume_schedulers(decision.rule.name)
        return Outcome(DONE, {"resumed": resumed})

    def _restart_schedulers(self, decision: Decision, now: float) -> Outcome:
        if RESTART_SCHEDULERS in self.disabled:
            return Outcome(SKIPPED, {"reason": f"{RESTART_SCHEDULERS} is switched off"})
        _, names = self._unhealthy_schedulers()
        results = {name: self.sources.restart_scheduler(name) for name in names}
        return Outcome(DONE if all(results.values()) else FAILED, {"restarted": results})

    # -- health findings -----------------------------------------------------------------------

    def _memory_finding(self, now: float) -> HealthCheckResult | None:
        stamp = utc_now_iso(now)
        if "memory_critical" in self._escalations:
            decision = self._escalations["memory_critical"]
            return HealthCheckResult(UNHEALTHY, None, None, stamp, f"recovery gave up: {decision.reason}")
        if "memory_high" in self._escalations:
            decision = self._escalations["memory_high"]
            return HealthCheckResult(DEGRADED, None, None, stamp, f"recovery could not lower it: {decision.reason}")
        if self._leak_note:
            return HealthCheckResult(DEGRADED, None, None, stamp, self._leak_note)
        return None

    def _schedulers_finding(self, now: float) -> HealthCheckResult | None:
        decision = self._escalations.get("scheduler_unhealthy")
        if decision is None:
            return None
        return HealthCheckResult(DEGRADED, None, None, utc_now_iso(now), f"restarts did not help: {decision.reason}")

    # -- process lifecycle ------------------------------------------------------------------------

    def reset_after_fork(self) -> None:
        """A forked worker starts its own rules, baseline and budget."""
        self._lock = threading.Lock()
        rules = self.engine.rules()
        self.engine = RuleEngine(rules)
        self.budget = ActionBudget(limit=self.budget.limit, window_s=self.budget.window_s)
        self.leak = LeakDetector(
            window_s=self.leak.window_s,
            threshold_bytes_per_s=self.leak.threshold_bytes_per_s,
            min_samples=self.leak.min_samples,
        )
        self._reset_process_state()


def summary(manager: RecoveryManager | None) -> Mapping[str, Any]:
    """The manager's rules and their state, for ``/api/diagnostics``."""
    if manager is None:
        return {"enabled": False}
    rules = []
    for rule in manager.engine.rules():
        state = manager.engine.state(rule.name)
        rules.append(
            {
                "name": rule.name,
                "signal": rule.signal,
                "threshold": rule.threshold,
                "action": rule.action,
                "enabled": rule.enabled,
                "active": state.active,
                "escalated": state.escalated,
                "lastValue": state.last_value,
            }
        )
    return {
        "enabled": manager.settings.recovery != "off",
        "mode": manager.settings.recovery,
        "disabledActions": sorted(manager.disabled),
        "ownGrowthBytes": manager.own_growth(),
        "rules": rules,
    }
