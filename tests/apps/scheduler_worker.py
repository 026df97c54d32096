"""A background worker service: a BlockingScheduler in the main thread, no
OpenTelemetry code. Run under ``opentelemetry-instrument python``.

The ``tick`` job runs every ``SCHED_APP_INTERVAL_S`` seconds (default 0.5)
and tags its span with ``app.pid``.
"""

import os

from apscheduler.schedulers.blocking import BlockingScheduler
from opentelemetry import trace


def tick():
    trace.get_current_span().set_attribute("app.pid", os.getpid())


scheduler = BlockingScheduler()
scheduler.add_job(tick, "interval", seconds=float(os.environ.get("SCHED_APP_INTERVAL_S", "0.5")), id="tick")
scheduler.start()
