"""The app ``bench/health_latency.py`` serves: a plain WSGI app with one
route of its own, ``/plain``, that answers what ``/health`` answers.

Its first lines hand otel-render's local endpoints their requests, standing
in for the WSGI middleware (``local_routes.match`` is the lookup the
middleware makes), so ``/health`` and ``/plain`` differ only in who answers.
"""

from otel_render.web import local_routes

BODY = b'{"status": "healthy"}'
HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    local = local_routes.match(environ.get("PATH_INFO", ""))
    if local is not None:
        return local(environ, start_response)
    start_response("200 OK", list(HEADERS))
    return [BODY]
