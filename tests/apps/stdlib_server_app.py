"""``otel_render.wrap_wsgi`` under the standard library's WSGI server, with no
``opentelemetry-instrument``: ``python stdlib_server_app.py PORT``."""

import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from plain_wsgi_app import app as plain_app

import otel_render

app = otel_render.wrap_wsgi(plain_app)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=QuietHandler)
    print("serving", flush=True)
    server.serve_forever()
