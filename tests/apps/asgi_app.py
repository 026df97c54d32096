"""An ASGI app for the web tests: gunicorn's ASGI workers serve it, and
otel-render must leave it alone (its WSGI middleware would break it)."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"asgi"})
