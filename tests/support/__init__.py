"""Shared test support for otel-render: real servers and processes, no mocks.

Modules (each owns one kind of test double or helper):

- ``support.otlp_receiver``: ``OTLPReceiver``, a loopback OTLP/HTTP backend that
  decodes what exporters send into plain Python records.
- ``support.processes``: ``AppProcess`` (a child process in its own process group
  with captured output), ``gunicorn_command``, ``http_request``, ``free_port``,
  ``venv_bin``.
- ``support.postgres``: ``PostgresCluster``, a throwaway PostgreSQL server.
- ``support.tcp_proxy``: ``TCPProxy``, a loopback TCP proxy that can forward,
  black-hole or refuse connections (for database deadline tests).

How to import: ``tests/`` is not a package (there is no ``tests/__init__.py``);
``tests/conftest.py`` puts the ``tests/`` directory itself on ``sys.path``, so
test modules anywhere under ``tests/`` import this package by its short name::

    from support.otlp_receiver import OTLPReceiver
    from support.processes import AppProcess, gunicorn_command, http_request

Most tests should use the fixtures from ``tests/conftest.py`` instead
(``otlp_receiver``, ``postgres``, ``tcp_proxy_factory``).
"""
