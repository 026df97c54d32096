"""Pool sizing advice for ``otel-render doctor``: will the app's connection
pools fit in the database's ``max_connections``?

Each gunicorn worker has its own pool, each pool may open ``pool_size +
max_overflow`` connections, and every instance of the service has its own
workers. When instances x workers x (pool_size + max_overflow) exceeds what
the server accepts (``max_connections`` minus the connections reserved for
superusers), a burst of traffic ends in "too many clients" errors.

Doctor does not import the app (that would start its schedulers and open its
connections). It takes:

- the database URL from ``--database-url`` or ``DATABASE_URL`` (Render sets
  it for a linked database);
- the number of workers from ``--workers``, else ``WEB_CONCURRENCY``, else
  ``-w``/``--workers`` in ``GUNICORN_CMD_ARGS`` (the sources gunicorn itself
  reads), else gunicorn's default of 1;
- the pool size from ``--pool-size``/``--max-overflow``, else SQLAlchemy's
  defaults (5 and 10);
- the number of instances from ``--instances`` (default 1).

``max_connections`` is read with one short connection (3 s timeout) when the
database is reachable; the URL is shown without its password.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_render.scrub import default as scrubber

DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10
CONNECT_TIMEOUT_S = 3


@dataclass(frozen=True)
class PoolDemand:
    """How many connections the service may open at most."""

    instances: int
    workers: int
    workers_source: str
    pool_size: int
    max_overflow: int

    @property
    def per_worker(self) -> int:
        return self.pool_size + max(0, self.max_overflow)

    @property
    def total(self) -> int:
        return self.instances * self.workers * self.per_worker

    def describe(self) -> str:
        instances = f"{self.instances} instances x " if self.instances != 1 else ""
        return (
            f"{instances}{self.workers} workers ({self.workers_source}) x "
            f"(pool_size {self.pool_size} + max_overflow {self.max_overflow}) = {self.total} connections"
        )


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved


def workers_from(environ: Mapping[str, str], given: int | None = None) -> tuple[int, str]:
    """The number of gunicorn workers and where it came from."""
    if given is not None:
        return given, "--workers"
    concurrency = (environ.get("WEB_CONCURRENCY") or "").strip()
    if concurrency.isdigit() and int(concurrency) > 0:
        return int(concurrency), "WEB_CONCURRENCY"
    try:
        arguments = shlex.split(environ.get("GUNICORN_CMD_ARGS") or "")
    except ValueError:
        arguments = []
    for index, argument in enumerate(arguments):
        value = None
        if argument in ("-w", "--workers") and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif argument.startswith("--workers="):
            value = argument.partition("=")[2]
        elif argument.startswith("-w") and argument[2:].isdigit():
            value = argument[2:]
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value), "GUNICORN_CMD_ARGS"
    return 1, "gunicorn's default"


def sqlalchemy_url(url: str) -> str:
    """Render and Heroku give ``postgres://``; SQLAlchemy wants ``postgresql://``."""
    return "postgresql://" + url[len("postgres://") :] if url.startswith("postgres://") else url


def read_server_limits(url: str, timeout_s: int = CONNECT_TIMEOUT_S) -> ServerLimits:
    """``max_connections`` (and reserved connections) of a PostgreSQL or MySQL server."""
    from sqlalchemy import create_engine  # pylint: disable=import-outside-toplevel
    from sqlalchemy.pool import NullPool  # pylint: disable=import-outside-toplevel

    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool, connect_args=_timeout_args(url, timeout_s))
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                maximum = int(connection.exec_driver_sql("SHOW max_connections").scalar_one())
                reserved = int(connection.exec_driver_sql("SHOW superuser_reserved_connections").scalar_one())
                return ServerLimits(maximum, reserved)
            if engine.dialect.name in ("mysql", "mariadb"):
                return ServerLimits(int(connection.exec_driver_sql("SELECT @@max_connections").scalar_one()))
            raise LookupError(f"{engine.dialect.name} has no connection limit to compare with")
    finally:
        engine.dispose()


def _timeout_args(url: str, timeout_s: int) -> dict[str, Any]:
    if url.startswith(("postgres://", "postgresql", "mysql", "mariadb")):
        return {"connect_timeout": timeout_s}
    return {}


def advice(demand: PoolDemand, limits: ServerLimits | None) -> tuple[bool, str]:
    """(fits, message): whether ``demand`` fits in ``limits``."""
    if limits is None:
        return True, f"pool sizing: {demand.describe()} (max_connections not read)"
    if demand.total > limits.available:
        per_worker = max(1, limits.available // max(1, demand.instances * demand.workers))
        return False, (
            f"pool sizing: {demand.describe()}, more than the database accepts "
            f"(max_connections {limits.max_connections} - {limits.reserved} reserved = {limits.available}); "
            f"keep pool_size + max_overflow at or below {per_worker} per worker"
        )
    return True, (
        f"pool sizing: {demand.describe()}, within max_connections {limits.max_connections} "
        f"({limits.reserved} reserved)"
    )


def shown_url(url: str) -> str:
    return scrubber.url(url)
