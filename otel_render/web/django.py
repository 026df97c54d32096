"""Django: the server span, route templates and unhandled exceptions of a
Django project served over WSGI, whatever server runs it.

Usage: nothing with ``opentelemetry-instrument`` (entry point ``django``), or::

    from otel_render.web.django import DjangoInstrumentor
    DjangoInstrumentor().instrument()

No setting changes (nothing is inserted into ``MIDDLEWARE``); the hooks are
on Django's classes and are applied when Django imports them:

- ``WSGIHandler.__call__`` runs each request through
  :func:`otel_render.web.wsgi.handle_request`, unless an outer layer (the
  gunicorn hook, ``wrap_wsgi``) already owns it;
- ``BaseHandler.resolve_request`` gives the request its route template
  (``/items/<int:item_id>``) as soon as the URLconf resolved it;
- the ``got_request_exception`` signal, which Django sends exactly for the
  exceptions that become a 500, captures the error context; Django makes its
  own error response as always.

At the first request, local endpoint paths (``/health``...) that the URLconf
resolves with a static route are left to the app. ASGI (``ASGIHandler``) is not
instrumented. This replaces the contrib ``opentelemetry-instrumentation-django``,
which our distro does not load.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Iterable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from otel_render.instrumentor import RenderInstrumentor
from otel_render.web import wsgi

_logger = logging.getLogger("otel_render.web")

_DISPATCH_UID = "otel_render.web.django"


class _State:
    active = False
    patched: set[str] = set()


def route_template(route: str | None) -> str | None:
    """Django's ``ResolverMatch.route`` as an ``http.route``: ``items/<int:pk>`` -> ``/items/<int:pk>``."""
    if not route:
        return None
    return route if route.startswith(("/", "^")) else "/" + route


def routed_paths(paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` that the project's URLconf resolves with a static route."""
    from django.conf import settings  # pylint: disable=import-outside-toplevel
    from django.urls import Resolver404, resolve  # pylint: disable=import-outside-toplevel

    if not settings.configured:
        return set()
    owned = set()
    for path in paths:
        try:
            match = resolve(path)
        except Resolver404:
            continue
        route = (getattr(match, "route", None) or "").strip("^$/")
        if route == path.strip("/"):
            owned.add(path)
    return owned


def _call(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    if kwargs or len(args) != 2:
        return wrapped(*args, **kwargs)
    return wsgi.handle_request(wrapped, args[0], args[1])


def _resolve_request(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    match = wrapped(*args, **kwargs)
    try:
        request = args[0] if args else kwargs["request"]
        server_request = getattr(request, "environ", {}).get(wsgi.ENVIRON_KEY)
        if server_request is not None:
            server_request.route = route_template(getattr(match, "route", None))
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not read the Django route", exc_info=True)
    return match


def _on_request_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    try:
        error = sys.exc_info()[1]
        server_request = getattr(request, "environ", {}).get(wsgi.ENVIRON_KEY)
        if server_request is not None and error is not None:
            server_request.capture_error(error)
    except Exception:  # pylint: disable=broad-except
        _logger.debug("otel-render: could not capture a Django error", exc_info=True)


def _patch_wsgi_handler(module: Any) -> None:
    if not _State.active or "wsgi" in _State.patched:
        return
    _State.patched.add("wsgi")
    wrapt.wrap_function_wrapper(module, "WSGIHandler.__call__", _call)
    wsgi.add_route_probe(routed_paths)


def _patch_base_handler(module: Any) -> None:
    if not _State.active or "base" in _State.patched:
        return
    _State.patched.add("base")
    wrapt.wrap_function_wrapper(module, "BaseHandler.resolve_request", _resolve_request)


def _connect_signal(module: Any) -> None:
    if not _State.active or "signals" in _State.patched:
        return
    _State.patched.add("signals")
    module.got_request_exception.connect(_on_request_exception, weak=False, dispatch_uid=_DISPATCH_UID)


class DjangoInstrumentor(RenderInstrumentor):
    """Instruments Django's WSGI handler (see the module docstring)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("django >= 4.2",)

    def _instrument(self, **kwargs: Any) -> None:
        _State.active = True
        # Applied when Django imports these (at once if it already has): a
        # Flask app in an environment that also has Django never imports it.
        wrapt.register_post_import_hook(_patch_wsgi_handler, "django.core.handlers.wsgi")
        wrapt.register_post_import_hook(_patch_base_handler, "django.core.handlers.base")
        wrapt.register_post_import_hook(_connect_signal, "django.core.signals")

    def _uninstrument(self, **kwargs: Any) -> None:
        _State.active = False
        if "wsgi" in _State.patched:
            from django.core.handlers import wsgi as django_wsgi  # pylint: disable=import-outside-toplevel

            unwrap(django_wsgi.WSGIHandler, "__call__")
            wsgi.remove_route_probe(routed_paths)
        if "base" in _State.patched:
            from django.core.handlers import base  # pylint: disable=import-outside-toplevel

            unwrap(base.BaseHandler, "resolve_request")
        if "signals" in _State.patched:
            from django.core import signals  # pylint: disable=import-outside-toplevel

            signals.got_request_exception.disconnect(dispatch_uid=_DISPATCH_UID)
        _State.patched = set()
