"""A WSGI app that uses only the OpenTelemetry API, as a manually instrumented
user app would: one span and one counter increment per request. The
foundation's integration tests run it under ``opentelemetry-instrument
gunicorn`` to check what the pipeline exports from every worker.

``?ms=N`` sleeps N milliseconds inside the span (to force concurrent requests
onto different sync workers). The JSON answer names the serving process.
"""

import json
import os
import time
from urllib.parse import parse_qs

from opentelemetry import metrics, trace

tracer = trace.get_tracer("pipeline-app")
requests_counter = metrics.get_meter("pipeline-app").create_counter("app.requests", unit="{request}")


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    milliseconds = int(query.get("ms", ["0"])[0])
    with tracer.start_as_current_span("handle"):
        requests_counter.add(1)
        time.sleep(milliseconds / 1000)
    resource = getattr(trace.get_tracer_provider(), "resource", None)
    instance = resource.attributes.get("service.instance.id") if resource is not None else None
    body = json.dumps({"pid": os.getpid(), "instance": instance}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
