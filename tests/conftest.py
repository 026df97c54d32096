"""Fixtures and markers shared by all otel-render tests.

This module owns the pytest wiring of ``tests/support``:

- it puts ``tests/`` on ``sys.path`` so that tests import the helpers as
  ``from support.<module> import ...`` (there is no ``tests/__init__.py``);
- it registers the ``integration`` and ``postgres`` markers, and marks every
  test that uses a PostgreSQL fixture with ``postgres`` automatically;
- fixtures: ``otlp_receiver``, ``postgres``, ``postgres_factory``,
  ``tcp_proxy_factory``.

When PostgreSQL is not installed, the PostgreSQL fixtures skip the test
locally, but fail it under ``CI=true``: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from support.otlp_receiver import OTLPReceiver  # noqa: E402
from support.postgres import PostgresCluster  # noqa: E402
from support.tcp_proxy import TCPProxy  # noqa: E402

_POSTGRES_FIXTURES = frozenset({"postgres", "postgres_factory"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts real processes or servers (slower)")
    config.addinivalue_line(
        "markers", "postgres: needs a PostgreSQL server (added automatically to tests using its fixtures)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A started ``OTLPReceiver``; its ``endpoint`` is the OTLP base URL."""
    with OTLPReceiver() as receiver:
        yield receiver


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _require_postgres() -> None:
    """Skip (locally) or fail (in CI) when a PostgresCluster cannot run here."""
    reason = PostgresCluster.unavailable_reason()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"{reason}. CI must install the PostgreSQL server packages before the tests.", pytrace=False)
    pytest.skip(f"{reason}; run the tests with `make test`, which installs them")


@pytest.fixture(scope="session")
def _postgres_session_cluster() -> Iterator[PostgresCluster]:
    _require_postgres()
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def postgres(_postgres_session_cluster: PostgresCluster) -> PostgresCluster:
    """The session's PostgreSQL cluster, running when the test starts.

    Shared by all tests: a test that stops or kills it need not restart it,
    but should use ``postgres_factory`` instead when it crashes the server on
    purpose, so later tests do not pay for crash recovery.
    """
    if not _postgres_session_cluster.is_running():
        _postgres_session_cluster.start()
    return _postgres_session_cluster


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresCluster]]:
    """Make fresh, started clusters of the test's own; all removed afterwards."""
    _require_postgres()
    clusters: list[PostgresCluster] = []

    def make() -> PostgresCluster:
        cluster = PostgresCluster()
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.cleanup()


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Callable[[str, int], TCPProxy]]:
    """Make ``TCPProxy(target_host, target_port)`` instances, closed afterwards."""
    proxies: list[TCPProxy] = []

    def make(target_host: str, target_port: int) -> TCPProxy:
        proxy = TCPProxy(target_host, target_port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
