"""Pool sizing advice for ``otel-render doctor``."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support.processes import free_port, venv_bin

from otel_render.cli import WARN, PoolOptions, check_database_pool
from otel_render.config import Settings
from otel_render.db.sizing import PoolDemand, ServerLimits, advice, read_server_limits, sqlalchemy_url, workers_from


@pytest.mark.parametrize(
    ("environ", "given", "expected"),
    [
        ({}, None, (1, "gunicorn's default")),
        ({"WEB_CONCURRENCY": "4"}, None, (4, "WEB_CONCURRENCY")),
        ({"WEB_CONCURRENCY": "4"}, 2, (2, "--workers")),
        ({"GUNICORN_CMD_ARGS": "--timeout 30 -w 3"}, None, (3, "GUNICORN_CMD_ARGS")),
        ({"GUNICORN_CMD_ARGS": "--workers=5 --preload"}, None, (5, "GUNICORN_CMD_ARGS")),
        ({"GUNICORN_CMD_ARGS": "-w6"}, None, (6, "GUNICORN_CMD_ARGS")),
        ({"WEB_CONCURRENCY": "lots", "GUNICORN_CMD_ARGS": "'unbalanced"}, None, (1, "gunicorn's default")),
    ],
)
def test_workers_come_from_where_gunicorn_reads_them(environ, given, expected):
    assert workers_from(environ, given) == expected


def test_advice_warns_with_a_per_worker_budget():
    demand = PoolDemand(instances=2, workers=4, workers_source="WEB_CONCURRENCY", pool_size=5, max_overflow=10)
    assert demand.total == 120
    fits, message = advice(demand, ServerLimits(max_connections=100, reserved=3))
    assert not fits
    assert "2 instances x 4 workers" in message and "= 120 connections" in message
    assert "at or below 12 per worker" in message
    assert advice(demand, ServerLimits(200, 3))[0]
    assert advice(demand, None) == (True, f"pool sizing: {demand.describe()} (max_connections not read)")


def test_render_style_urls_are_accepted():
    assert sqlalchemy_url("postgres://u:p@h/d") == "postgresql://u:p@h/d"
    assert sqlalchemy_url("postgresql+psycopg2://h/d") == "postgresql+psycopg2://h/d"


def test_max_connections_is_read_from_a_real_server_and_the_password_is_never_shown(postgres):
    limits = read_server_limits(postgres.url(driver=None).replace("postgresql://", "postgres://"))
    assert limits.max_connections == int(postgres.psql("SHOW max_connections"))
    assert limits.reserved == int(postgres.psql("SHOW superuser_reserved_connections"))
    settings, _ = Settings.from_environ({"DATABASE_URL": postgres.url(), "WEB_CONCURRENCY": "40"})
    findings = check_database_pool(settings, PoolOptions())
    assert [finding.level for finding in findings] == [WARN]
    assert "40 workers (WEB_CONCURRENCY)" in findings[0].message and "max_connections" in findings[0].message
    assert postgres.password not in findings[0].message


def test_doctor_reports_an_unreachable_database_without_its_password():
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RENDER", "DATABASE_URL"))}
    environ["DATABASE_URL"] = f"postgresql://app:top-secret-pw@127.0.0.1:{free_port()}/app"
    result = subprocess.run(
        [venv_bin("otel-render"), "doctor", "--json", "--workers", "3"], env=environ, capture_output=True, text=True, timeout=60
    )
    assert "top-secret-pw" not in result.stdout + result.stderr
    messages = [f["message"] for f in json.loads(result.stdout)["findings"] if f["check"] == "database"]
    assert any("cannot read max_connections" in message for message in messages)
    assert any("3 workers (--workers)" in message for message in messages)
