"""Paths the package answers itself, ahead of the app: the local endpoints
(``/health``, ``/api/health``, ``/api/metrics``, ``/api/diagnostics``).

The endpoints module registers a small WSGI app per path; the WSGI middleware
looks each request's ``PATH_INFO`` up here (one dict lookup) before anything
else and, on a match, hands the request to that app instead of the user's.

Apps built from the seed design often have their own ``/health``. Where the
framework can tell (Flask's url map, Django's URLconf), the framework hook calls
:func:`yield_to_app` for each path the app routes itself: the app keeps the
path, and ours moves under ``OTEL_RENDER_ENDPOINT_PREFIX`` (logged once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

_logger = logging.getLogger("otel_render.web")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_lock = threading.Lock()
_routes: dict[str, WSGIApp] = {}
_prefix = "/_otel"


def set_prefix(prefix: str) -> None:
    """Where a local endpoint moves when the app owns its path (``/_otel`` by default)."""
    global _prefix
    _prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""


def register(path: str, app: WSGIApp) -> None:
    with _lock:
        _routes[path] = app


def match(path: str) -> WSGIApp | None:
    """The local endpoint for ``path``, or None (the request goes to the app)."""
    return _routes.get(path)


def paths() -> dict[str, WSGIApp]:
    with _lock:
        return dict(_routes)


def yield_to_app(path: str) -> str | None:
    """The app routes ``path`` itself: move ours under the prefix; return the new path."""
    with _lock:
        app = _routes.get(path)
        if app is None or not _prefix:
            if app is not None:
                _routes.pop(path)
            return None
        moved = _prefix + path
        _routes.pop(path)
        _routes[moved] = app
    _logger.info("otel-render: the app routes %s itself; otel-render serves its endpoint at %s", path, moved)
    return moved


def clear() -> None:
    with _lock:
        _routes.clear()
