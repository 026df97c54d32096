"""``endpoints_app`` for a start command without ``opentelemetry-instrument``:
the app configures otel-render itself and, being a plain WSGI callable that no
framework hook sees, wraps itself with ``otel_render.wrap_wsgi``. Each gunicorn
worker configures otel-render after it was forked (the master never does)."""

import otel_render

otel_render.configure()

from endpoints_app import app as plain_app  # noqa: E402

app = otel_render.wrap_wsgi(plain_app)
