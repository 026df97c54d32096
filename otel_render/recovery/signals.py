"""The numbers the recovery rules watch, read from the instance's merged meters
(the same points the local endpoints show and the OTLP export carries) and
from the state this process already keeps (its schedulers, its leak detector).

Pure functions of those inputs; the manager calls them once per evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from otel_render.local.snapshot import InstanceMetrics

#: Signal names (keys of the values mapping the rules read).
MEMORY_UTILIZATION = "memory.utilization"
MEMORY_LEAK = "memory.leak"
DATABASE_UP = "database.up"
SCHEDULERS_UNHEALTHY = "schedulers.unhealthy"

UTILIZATION_METRIC = "otel_render.instance.memory.utilization"
DB_STATUS_METRIC = "otel_render.db.status"
GROWTH_METRIC = "otel_render.process.memory.growth"


def read_signals(
    view: InstanceMetrics | None,
    *,
    leak_suspected: bool,
    unhealthy_schedulers: int | None,
) -> dict[str, float]:
    """The values mapping for one evaluation; a signal without data is left out
    (the rules watching it keep their state)."""
    values: dict[str, float] = {MEMORY_LEAK: 1.0 if leak_suspected else 0.0}
    if unhealthy_schedulers is not None:
        values[SCHEDULERS_UNHEALTHY] = float(unhealthy_schedulers)
    if view is None:
        return values
    utilization = [point.value for point in view.points(UTILIZATION_METRIC)]
    if utilization:
        values[MEMORY_UTILIZATION] = max(utilization)
    database = [point.value for point in view.points(DB_STATUS_METRIC)]
    if database:
        # One pool down in any process is the database down for the instance.
        values[DATABASE_UP] = min(database)
    return values


def grew_most(own_pid: int, own: float, others: Mapping[int, float]) -> bool:
    """Whether this process holds the most (ties go to the lowest pid), so that
    exactly one process of the instance acts on instance-wide memory rules."""
    candidates = {**others, own_pid: own}
    top = max(candidates.items(), key=lambda item: (item[1], -item[0]))
    return top[0] == own_pid


def unhealthy_schedulers(states: Sequence[Any]) -> tuple[int, list[str]]:
    """How many of this process's schedulers are dead or have overdue jobs
    while this process runs them, and their names."""
    names = [
        state.name
        for state in states
        if state.runner and (state.state == "dead" or any(job.overdue for job in state.jobs))
    ]
    return len(names), names
