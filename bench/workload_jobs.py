"""Run a no-op APScheduler job many times through the executor's ``run_job``
(the function a thread pool calls for each run) and print the cost per run.

Under plain OpenTelemetry nothing instruments APScheduler; under otel-render
each run is a span and meter points. The scheduler is started paused, so its
own thread stays idle and only the runs below are measured.
"""

import json
import os
import sys
import time
from datetime import datetime, timezone

from apscheduler.executors import pool
from apscheduler.schedulers.background import BackgroundScheduler

RUNS = int(os.environ.get("BENCH_JOB_RUNS", "20000"))


def noop():
    pass


scheduler = BackgroundScheduler()
job = scheduler.add_job(noop, "interval", hours=1, id="noop")
scheduler.start(paused=True)
for _ in range(500):  # warm up
    pool.run_job(job, "default", [datetime.now(timezone.utc)], "apscheduler.executors.default")
started = time.perf_counter()
for _ in range(RUNS):
    pool.run_job(job, "default", [datetime.now(timezone.utc)], "apscheduler.executors.default")
elapsed = time.perf_counter() - started
scheduler.shutdown(wait=False)
json.dump({"us_per_run": elapsed / RUNS * 1e6, "runs": RUNS}, sys.stdout)
