"""A plain WSGI app on SQLAlchemy, with no OpenTelemetry code, for the
database integration tests (run it under ``opentelemetry-instrument gunicorn``).

``DATABASE_URL`` names the database. At import it creates and fills its table
and reads it back, so that with ``--preload`` the gunicorn master has used the
engine before the workers are forked, as apps that query at start-up do.

Routes (``/health`` and ``/api/*`` are otel-render's, answered ahead of the app):

- ``/query``: one ``SELECT`` through the engine; the JSON answer names the
  worker (``pid``) and the PostgreSQL backend that served it; ``?ms=N``
  holds the connection N milliseconds longer (to spread concurrent requests
  over both sync workers);
- ``/db-status``: what otel-render's status tracker says in this worker.

A database error becomes a 503 whose JSON names the error class, as an app's
own error handler would.
"""

import json
import os
import time
from urllib.parse import parse_qs

import sqlalchemy

engine = sqlalchemy.create_engine(os.environ["DATABASE_URL"], pool_size=2, max_overflow=2)

with engine.begin() as connection:
    connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS items (id integer PRIMARY KEY, name text)")
    if connection.exec_driver_sql("SELECT count(*) FROM items").scalar() == 0:
        connection.exec_driver_sql("INSERT INTO items VALUES (1, 'one'), (2, 'two')")


def respond(start_response, status, payload):
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/db-status":
        from otel_render.db import snapshot  # the public API the endpoints read

        return respond(start_response, "200 OK", {"pid": os.getpid(), "databases": [s.to_dict() for s in snapshot()]})
    if path == "/query":
        started = time.monotonic()
        try:
            with engine.connect() as connection:
                names = [row[0] for row in connection.execute(sqlalchemy.text("SELECT name FROM items ORDER BY id"))]
                backend = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                time.sleep(int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0]) / 1000)
        except sqlalchemy.exc.SQLAlchemyError as error:
            return respond(
                start_response,
                "503 Service Unavailable",
                {"pid": os.getpid(), "error": type(error).__name__, "seconds": time.monotonic() - started},
            )
        return respond(start_response, "200 OK", {"pid": os.getpid(), "backend": backend, "names": names})
    return respond(start_response, "404 Not Found", {"error": "not found"})
