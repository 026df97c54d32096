"""The scheduler unit tests run real APScheduler in-process through the
``instrument`` fixture of :mod:`support.scheduler`."""

from support.scheduler import instrument  # noqa: F401 - the fixture
