"""The example app: Flask + SQLAlchemy on SQLite + an APScheduler job.

It contains no OpenTelemetry code at all: run it as Render would, with the
start command changed::

    opentelemetry-instrument gunicorn -w 2 --preload examples.app:app

Routes: ``/`` (lists items), ``/items/<id>`` (one lookup through SQLAlchemy),
``POST /items`` (creates one), ``/slow?ms=`` (sleeps), ``/fail`` (raises).
The ``count-items`` job runs every ``EXAMPLE_JOB_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import logging
import os
import time

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask, abort, jsonify, request
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///example.db")
JOB_INTERVAL_S = float(os.environ.get("EXAMPLE_JOB_INTERVAL_S", "10"))

log = logging.getLogger("example")
engine = create_engine(DATABASE_URL)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


Base.metadata.create_all(engine)
with Session(engine) as session:
    if session.scalar(select(func.count(Item.id))) == 0:
        session.add_all(Item(name=f"item {number}") for number in range(1, 21))
        session.commit()

app = Flask(__name__)


@app.get("/")
def index():
    with Session(engine) as session:
        items = session.scalars(select(Item).order_by(Item.id).limit(50)).all()
    return jsonify([{"id": item.id, "name": item.name} for item in items])


@app.get("/items/<int:item_id>")
def get_item(item_id: int):
    with Session(engine) as session:
        item = session.get(Item, item_id)
    if item is None:
        abort(404)
    log.info("item %s looked up", item_id)
    return jsonify({"id": item.id, "name": item.name})


@app.post("/items")
def create_item():
    name = (request.get_json(silent=True) or {}).get("name") or "unnamed"
    with Session(engine) as session:
        item = Item(name=str(name)[:100])
        session.add(item)
        session.commit()
        return jsonify({"id": item.id, "name": item.name}), 201


@app.get("/slow")
def slow():
    milliseconds = min(int(request.args.get("ms", "200")), 60_000)
    time.sleep(milliseconds / 1000)
    return jsonify({"slept_ms": milliseconds})


@app.get("/fail")
def fail():
    raise RuntimeError("the example app failed on purpose")


def count_items() -> int:
    with Session(engine) as session:
        count = session.scalar(select(func.count(Item.id))) or 0
    log.info("count-items job: %d items", count)
    return count


scheduler = BackgroundScheduler()
scheduler.add_job(count_items, "interval", seconds=JOB_INTERVAL_S, id="count-items")
scheduler.start()
