"""Web servers and frameworks: gunicorn hooks, WSGI middleware, Flask and Django."""
