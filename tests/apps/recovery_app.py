"""A WSGI app whose ``/hog?mb=N`` makes the serving worker hold N MiB (touched,
so it is resident), for the recovery tests. Every answer names the worker.
Under ``opentelemetry-instrument gunicorn`` otel-render's middleware serves
``/health`` and ``/api/*`` in front of it."""

import json
import os
from urllib.parse import parse_qs

MIB = 2**20
held = []


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/hog":
        megabytes = int(parse_qs(environ.get("QUERY_STRING", "")).get("mb", ["100"])[0])
        held.append(bytearray(b"\x01") * (megabytes * MIB))
    body = json.dumps({"pid": os.getpid(), "held_mib": sum(len(block) for block in held) // MIB}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
