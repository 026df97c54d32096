"""The app the WSGI overhead benchmark drives: Flask, one item lookup through
SQLAlchemy on SQLite, one log line per request. No OpenTelemetry code: each
side instruments it its own way (or not at all) from the command line.

Requests are plain in-process WSGI calls (no sockets), so the figure is the
cost of the app plus its instrumentation. Prints one JSON line:
``{"us_per_request": ..., "cpu_us_per_request": ..., "requests": ...}``; the
CPU time counts every thread of the process (the exporters' too) and is less
disturbed than wall time by other work on a shared machine.

Usage: ``python workload_wsgi.py REQUESTS WARMUP``
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
import time

from flask import Flask, abort, jsonify
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
WARMUP = int(sys.argv[2]) if len(sys.argv) > 2 else 1000

# One log line per request, written (the stream discards it) like an app's own logging.
logging.basicConfig(
    level=logging.INFO, stream=open(os.devnull, "w"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
log = logging.getLogger("bench.app")

database = os.path.join(tempfile.mkdtemp(prefix="otel-render-bench-"), "items.db")
engine = create_engine(f"sqlite:///{database}")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


Base.metadata.create_all(engine)
with Session(engine) as session:
    session.add_all(Item(name=f"item {number}") for number in range(1, 21))
    session.commit()

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def get_item(item_id: int):
    with Session(engine) as session:
        item = session.scalar(select(Item).where(Item.id == item_id))
    if item is None:
        abort(404)
    log.info("item %s looked up", item_id)
    return jsonify({"id": item.id, "name": item.name})


def environ_for(path: str) -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def start_response(status, headers, exc_info=None):
    assert status.startswith("200"), status
    return lambda data: None


def one_request(number: int) -> None:
    body = app(environ_for(f"/items/{number % 20 + 1}"), start_response)
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def main() -> None:
    for number in range(WARMUP):
        one_request(number)
    started, cpu_started = time.perf_counter(), time.process_time()
    for number in range(REQUESTS):
        one_request(number)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "us_per_request": elapsed / REQUESTS * 1e6,
        "cpu_us_per_request": cpu / REQUESTS * 1e6,
        "requests": REQUESTS,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
