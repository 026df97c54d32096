"""Flask: the server span, route templates and unhandled exceptions of every
Flask app, whatever server runs it.

Usage: nothing with ``opentelemetry-instrument`` (entry point ``flask``), or::

    from otel_render.web.flask import FlaskInstrumentor
    FlaskInstrumentor().instrument()

The hooks are on the classes, so they cover apps created before and after
instrumentation, and cost nothing per app:

- ``Flask.wsgi_app`` runs each request through
  :func:`otel_render.web.wsgi.handle_request`, unless an outer layer (the
  gunicorn hook, ``wrap_wsgi``) already owns it;
- ``RequestContext.match_request`` gives the request its route template
  (``/items/<int:item_id>``) as soon as Flask has matched the URL, so a stuck
  request is reported with its route too;
- ``Flask.handle_exception`` (what Flask calls for an exception no error
  handler took) captures the error context; Flask makes its 500 as always.

At the first request, local endpoint paths (``/health``...) that an app routes
itself with a static rule are left to the app (see ``web/local_routes.py``).
This replaces the contrib ``opentelemetry-instrumentation-flask``, which our
distro does not load.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Collection, Iterable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from otel_render.instrumentor import RenderInstrumentor
from otel_render.web import wsgi

_logger = logging.getLogger("otel_render.web")

_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def routed_paths(paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` that a known Flask app routes with a static rule."""
    wanted = set(paths)
    owned: set[str] = set()
    for app in list(_apps):
        owned |= {rule.rule for rule in app.url_map.iter_rules() if not rule.arguments and rule.rule in wanted}
    return owned


def _remember(app: Any) -> None:
    if app not in _apps:
        _apps.add(app)
        wsgi.add_route_probe(routed_paths)


def _init(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    _remember(instance)
    return result


def _wsgi_app(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    if kwargs or len(args) != 2:
        return wrapped(*args, **kwargs)
    if instance not in _apps:
        _remember(instance)
    return wsgi.handle_request(wrapped, args[0], args[1])


def _match_request(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        request = instance.request
        server_request = request.environ.get(wsgi.ENVIRON_KEY)
        rule = request.url_rule
        if server_request is not None and rule is not None:
            server_request.route = rule.rule
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not read the Flask route", exc_info=True)
    return result


def _handle_exception(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    try:
        from flask import request  # pylint: disable=import-outside-toplevel

        server_request = request.environ.get(wsgi.ENVIRON_KEY)
        error = args[0] if args else kwargs.get("e")
        if server_request is not None and isinstance(error, BaseException):
            server_request.capture_error(error)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not capture a Flask error", exc_info=True)
    return wrapped(*args, **kwargs)


class FlaskInstrumentor(RenderInstrumentor):
    """Instruments every Flask app (see the module docstring)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("flask >= 2.2",)

    def _instrument(self, **kwargs: Any) -> None:
        import flask  # pylint: disable=import-outside-toplevel
        import flask.ctx  # pylint: disable=import-outside-toplevel

        wrapt.wrap_function_wrapper(flask.Flask, "__init__", _init)
        wrapt.wrap_function_wrapper(flask.Flask, "wsgi_app", _wsgi_app)
        wrapt.wrap_function_wrapper(flask.Flask, "handle_exception", _handle_exception)
        wrapt.wrap_function_wrapper(flask.ctx.RequestContext, "match_request", _match_request)
        wsgi.add_app_observer(_observe)

    def _uninstrument(self, **kwargs: Any) -> None:
        import flask  # pylint: disable=import-outside-toplevel
        import flask.ctx  # pylint: disable=import-outside-toplevel

        unwrap(flask.Flask, "__init__")
        unwrap(flask.Flask, "wsgi_app")
        unwrap(flask.Flask, "handle_exception")
        unwrap(flask.ctx.RequestContext, "match_request")
        wsgi.remove_app_observer(_observe)
        wsgi.remove_route_probe(routed_paths)


def _observe(app: Any) -> None:
    """An app handed to ``wrap_wsgi`` or loaded by gunicorn: remember it if it is a Flask app."""
    import flask  # pylint: disable=import-outside-toplevel

    if isinstance(app, flask.Flask):
        _remember(app)
