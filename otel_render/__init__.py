"""otel-render: OpenTelemetry for Python web apps on Render, in one start command.

Usage, with no code change::

    opentelemetry-instrument gunicorn app:app

or, when the start command cannot change, at the top of the WSGI module::

    import otel_render
    otel_render.configure()

For a WSGI app that neither gunicorn, Flask nor Django hands to us::

    app = otel_render.wrap_wsgi(app)

Public API: :func:`configure`, :func:`wrap_wsgi`, :func:`on_memory_pressure` (register a
cache clear for when the instance runs short of memory) and ``__version__``. Everything is configured by
environment variables (``docs/configuration.md``); ``OTEL_SDK_DISABLED=true``
turns the whole package off.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry.util._importlib_metadata import entry_points

from otel_render.distro import configure_sdk
from otel_render.recovery.memory import on_memory_pressure
from otel_render.version import __version__

__all__ = ["configure", "on_memory_pressure", "wrap_wsgi", "__version__"]

_logger = logging.getLogger("otel_render")
_instrument_lock = threading.Lock()


def configure(*, instrument: bool = True) -> bool:
    """Configure the SDK as ``opentelemetry-instrument`` would, then instrument.

    Idempotent: a second call, a call after ``opentelemetry-instrument`` already
    configured the process, or a call in a forked worker of a configured master
    does nothing more. Returns whether otel-render is active. Never raises.
    """
    pipeline = configure_sdk()
    if pipeline is None:
        return False
    if instrument:
        _load_own_instrumentors()
    return True


def wrap_wsgi(app: Any) -> Any:
    """``app`` behind otel-render's WSGI middleware: one server span per
    request, the HTTP meters, correlation ids, error contexts, the request
    watchdog (see ``otel_render/web/wsgi.py``).

    Configures the SDK first when nothing has (as :func:`configure` does);
    with ``OTEL_SDK_DISABLED=true`` (or a configuration that failed) the app
    comes back unchanged. Wrapping an app twice, or an app gunicorn's hook
    already wraps, is harmless: a request only ever gets one server span.
    Never raises.
    """
    from otel_render.web import wsgi  # pylint: disable=import-outside-toplevel

    if not configure():
        return app
    try:
        return wsgi.wrap(app)
    except Exception:  # pylint: disable=broad-except
        _logger.warning("otel-render: could not wrap the WSGI app; it runs uninstrumented", exc_info=True)
        return app


def _load_own_instrumentors() -> None:
    """Instrument every integration otel-render publishes (not contrib ones)."""
    with _instrument_lock:
        for entry_point in entry_points(group="opentelemetry_instrumentor"):
            if not entry_point.value.startswith("otel_render"):
                continue
            try:
                instrumentor = entry_point.load()()
                if not instrumentor.is_instrumented_by_opentelemetry:
                    instrumentor.instrument()
            except ModuleNotFoundError as exc:
                _logger.debug("otel-render: %s not instrumented: %s", entry_point.name, exc)
            except Exception:  # pylint: disable=broad-except
                _logger.warning("otel-render: could not instrument %s", entry_point.name, exc_info=True)
