"""A WSGI app with an APScheduler job started at import, as Render apps do,
and no OpenTelemetry setup of its own. The scheduler tests run it under
``opentelemetry-instrument gunicorn``.

The ``tick`` job runs every ``SCHED_APP_INTERVAL_S`` seconds (default 1). It
tags its span (the current span while it runs) with ``app.pid``, so tests can
tell which process ran it. When ``SCHED_APP_MARKER_DIR`` is set, each run
writes ``<dir>/<pid>-<n>.started`` before sleeping ``SCHED_APP_SLEEP_S``
seconds (default 0). Like many apps it shuts its scheduler down in an
``atexit`` handler. The WSGI answer names the serving process.
"""

import atexit
import json
import os
import time
from itertools import count

from apscheduler.schedulers.background import BackgroundScheduler
from opentelemetry import trace

INTERVAL_S = float(os.environ.get("SCHED_APP_INTERVAL_S", "1"))
SLEEP_S = float(os.environ.get("SCHED_APP_SLEEP_S", "0"))
MARKER_DIR = os.environ.get("SCHED_APP_MARKER_DIR")
_runs = count(1)


def tick():
    trace.get_current_span().set_attribute("app.pid", os.getpid())
    if MARKER_DIR:
        with open(os.path.join(MARKER_DIR, f"{os.getpid()}-{next(_runs)}.started"), "w"):
            pass
    time.sleep(SLEEP_S)


scheduler = BackgroundScheduler()
scheduler.add_job(tick, "interval", seconds=INTERVAL_S, id="tick")
scheduler.start()
atexit.register(lambda: scheduler.shutdown())  # as many Flask apps do


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
