"""``endpoints_app`` for a start command without ``opentelemetry-instrument``:
the app calls ``otel_render.configure()`` itself, so each gunicorn worker
configures otel-render after it was forked (the master never does)."""

import otel_render

otel_render.configure()

from endpoints_app import app  # noqa: E402,F401
