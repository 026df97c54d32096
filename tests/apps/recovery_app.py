"""A WSGI app whose ``/hog?mb=N`` makes the serving worker hold N MiB (touched,
so it is resident), for the recovery tests. Every answer names the worker."""

import json
import os
from urllib.parse import parse_qs

from otel_render.web import local_routes

MIB = 2**20
held = []


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    local = local_routes.match(path)  # stands in for the WSGI middleware
    if local is not None:
        return local(environ, start_response)
    if path == "/hog":
        megabytes = int(parse_qs(environ.get("QUERY_STRING", "")).get("mb", ["100"])[0])
        held.append(bytearray(b"\x01") * (megabytes * MIB))
    body = json.dumps({"pid": os.getpid(), "held_mib": sum(len(block) for block in held) // MIB}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
