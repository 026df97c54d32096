"""A Flask app for the web tests: ``flask_app:app``. No OpenTelemetry code.

Routes: ``/items/<int:item_id>`` (logs a line), ``/fail`` (raises),
``/health`` (the app's own, which must win over otel-render's),
``/slow?ms=`` (sleeps).
"""

import logging
import time

from flask import Flask, request

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("flask_app")
app = Flask(__name__)


@app.get("/items/<int:item_id>")
def item(item_id):
    log.info("item %s looked up", item_id)
    return {"id": item_id}


@app.get("/fail")
def fail():
    raise RuntimeError("flask view failed: password=hunter2")


@app.get("/health")
def own_health():
    return {"mine": True}


@app.get("/slow")
def slow():
    time.sleep(int(request.args.get("ms", "100")) / 1000)
    return {"slept": True}
