"""The database integration: SQLAlchemy 1.4-2.1 spans and pool meters, the
database status tracker, deadlines, circuit breaker and reconnect probe.

Modules:

- :mod:`~otel_render.db.instrumentor`: the ``sqlalchemy`` entry point;
- :mod:`~otel_render.db.engine`: the SQLAlchemy hooks themselves;
- :mod:`~otel_render.db.pool`: pool name and meters;
- :mod:`~otel_render.db.query`: query text without literals, operation, table;
- :mod:`~otel_render.db.status`: up/down per database, health check;
- :mod:`~otel_render.db.circuit`: the circuit breaker;
- :mod:`~otel_render.db.deadline`: connect/checkout/ping/statement deadlines;
- :mod:`~otel_render.db.probe`: background probe with backoff and jitter;
- :mod:`~otel_render.db.sizing`: pool sizing advice for ``otel-render doctor``.

Public API for the endpoints and the recovery module (no SQLAlchemy import):
:func:`snapshot` (a :class:`~otel_render.db.status.DatabaseStatus` per
database), :func:`is_up`, and :func:`request_probe` (probe every database now).
"""

from otel_render.db.probe import request_probe
from otel_render.db.status import DatabaseStatus, is_up, snapshot

__all__ = ["DatabaseStatus", "is_up", "request_probe", "snapshot"]
