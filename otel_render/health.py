"""The health model (the seed's EnhancedHealthStatus) and the registry of
component checks that feed it.

A component (database, schedulers, memory, performance) registers a check: a
function of the current time returning a :class:`HealthCheckResult`. Checks run
in the background on an interval and their results are cached, so serving a
health request never runs a query or waits on a slow check (see the endpoints
module). ``status`` is one of ``healthy``, ``degraded``, ``unhealthy``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_ORDER = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


@dataclass(frozen=True)
class HealthCheckResult:
    """One component's state, in the IETF health-check draft's terms."""

    status: str
    observedValue: Any = None  # noqa: N815 - the draft's field names
    observedUnit: str | None = None  # noqa: N815
    time: str | None = None
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(statuses: list[str]) -> str:
    """The worst of several statuses (healthy when there are none)."""
    return max(statuses, key=_ORDER.__getitem__, default=HEALTHY)


Check = Callable[[float], HealthCheckResult]

_checks: dict[str, Check] = {}
_lock = threading.Lock()


def register_check(name: str, check: Check) -> None:
    """Register (or replace) the check for component ``name``."""
    with _lock:
        _checks[name] = check


def registered_checks() -> dict[str, Check]:
    with _lock:
        return dict(_checks)
