"""A plain WSGI app for the local endpoints' integration tests, run under
``opentelemetry-instrument gunicorn`` like a user's app.

It has no telemetry code of its own besides one app metric: otel-render's
gunicorn hook puts it behind the WSGI middleware, which answers ``/health``
and ``/api/*`` ahead of it, makes the server span of every other request,
records ``http.server.request.duration`` and captures the error context of an
exception that escapes the app. Like any app on a framework otel-render has no
hook for, it names its route templates with
``otel_render.web.wsgi.set_route``.

``app.boots`` is incremented once at import: with ``--preload`` that happens
in the master only, so the instance total must stay 1 however many workers
inherit the master's points.

With ``DATABASE_URL`` set, the app creates a SQLAlchemy engine and runs one
query at import (as apps that check their database at start do); otel-render's
database integration then tracks that database (its status tracker and its
``database`` health check).

Routes:

- ``/``: 200;
- ``/slow?ms=N``: sleeps N milliseconds;
- ``/fail``: raises; the message names the database URL with its password,
  as careless error messages do (``str(engine.url)`` hides the password,
  ``render_as_string(hide_password=False)`` does not): the scrubber must take
  it out of the error context, the span and the log lines;
- ``/db``: one ``SELECT 1`` through the engine; 503 when it fails.
"""

import json
import os
import time
from urllib.parse import parse_qs

from opentelemetry import metrics

from otel_render.web.wsgi import set_route

meter = metrics.get_meter("endpoints-app")
meter.create_counter("app.boots", unit="{boot}").add(1)

ROUTES = ("/", "/slow", "/fail", "/db")
DATABASE_URL = os.environ.get("DATABASE_URL")

engine = None
if DATABASE_URL:
    import sqlalchemy

    engine = sqlalchemy.create_engine(DATABASE_URL, pool_size=2, max_overflow=0)
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))


def respond(start_response, status, payload):
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path in ROUTES:
        set_route(environ, path)
    if path == "/fail":
        where = engine.url.render_as_string(hide_password=False) if engine is not None else "nowhere"
        raise RuntimeError(f"the endpoints test app failed on purpose (database {where})")
    if path == "/slow":
        time.sleep(int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["100"])[0]) / 1000)
    if path == "/db":
        import sqlalchemy

        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.SQLAlchemyError as error:
            return respond(start_response, "503 Service Unavailable", {"error": type(error).__name__})
    if path not in ROUTES:
        return respond(start_response, "404 Not Found", {"error": "not found"})
    return respond(start_response, "200 OK", {"pid": os.getpid()})
