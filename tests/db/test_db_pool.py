"""Pool names without credentials, and pool counts read from real SQLAlchemy pools."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, QueuePool

from otel_render.db.pool import pool_counts, pool_name, pool_name_of_url


def test_pool_name_has_no_user_password_or_query():
    url = make_url("postgresql+psycopg2://app:s3cret-pw@db.internal:5433/shop?sslmode=require&password=x")
    name = pool_name_of_url(url)
    assert name == "postgresql://db.internal:5433/shop"
    assert "s3cret" not in name and "app@" not in name
    assert pool_name_of_url(make_url("sqlite:///data/app.db")) == "sqlite:///data/app.db"
    assert pool_name_of_url(make_url("sqlite://")) == "sqlite://"
    assert pool_name("mysql", "h", None, "d") == "mysql://h/d"


def test_queue_pool_counts():
    engine = sqlalchemy.create_engine("sqlite:///:memory:", poolclass=QueuePool, pool_size=2, max_overflow=3)
    first, second = engine.connect(), engine.connect()
    counts = pool_counts(engine.pool)
    assert (counts.used, counts.idle, counts.max) == (2, 0, 5)
    first.close()
    counts = pool_counts(engine.pool)
    assert (counts.used, counts.idle) == (1, 1)
    second.close()
    engine.dispose()


def test_pools_without_counts_report_what_was_counted():
    engine = sqlalchemy.create_engine("sqlite://", poolclass=NullPool)
    counts = pool_counts(engine.pool, counted_used=2)
    assert (counts.used, counts.idle, counts.max) == (2, 0, None)
