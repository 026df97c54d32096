"""Which apps the gunicorn hook leaves alone (the hook itself runs in the
integration tests, under real gunicorn)."""

from __future__ import annotations

from otel_render.web.gunicorn import is_asgi


async def asgi_function(scope, receive, send):
    pass


class AsgiApp:
    async def __call__(self, scope, receive, send):
        pass


class WsgiApp:
    def __call__(self, environ, start_response):
        return []


def wsgi_function(environ, start_response):
    return []


def test_asgi_worker_classes_and_coroutine_apps_are_asgi():
    assert is_asgi("uvicorn.workers.UvicornWorker", wsgi_function)
    assert is_asgi("uvicorn_worker.UvicornWorker", wsgi_function)
    assert is_asgi("asgi", wsgi_function)
    assert is_asgi("sync", asgi_function)
    assert is_asgi("gthread", AsgiApp())


def test_wsgi_apps_under_wsgi_workers_are_wsgi():
    assert not is_asgi("sync", wsgi_function)
    assert not is_asgi("gthread", WsgiApp())
    assert not is_asgi("gevent", WsgiApp())
