"""A bare WSGI callable for the web tests: ``plain_wsgi_app:app``.

Routes: ``/`` (logs a warning), ``/stream`` (a generator body), ``/fail``
(raises), ``/slow?ms=`` (sleeps in ``wait_for_report``), ``/stalls`` (this
worker's stuck-request records, read from otel-render's diagnostics ring: the
test's window into the process).
"""

import json
import logging
import time
from urllib.parse import parse_qs

log = logging.getLogger("plain_wsgi_app")


def wait_for_report(milliseconds):
    time.sleep(milliseconds / 1000)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/fail":
        raise RuntimeError("plain app failed: password=hunter2")
    if path == "/slow":
        wait_for_report(int(query.get("ms", ["100"])[0]))
    if path == "/stalls":
        from otel_render import diagnostics

        body = json.dumps([record.to_dict() for record in diagnostics.stalls.snapshot()]).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (chunk for chunk in (b"a", b"b"))
    log.warning("plain app served %s", path)
    body = b"plain"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
