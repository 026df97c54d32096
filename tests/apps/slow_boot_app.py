"""A WSGI app whose workers take ``SLOW_BOOT_S`` seconds between fork and
gunicorn's signal setup (an after-fork hook that sleeps, registered at import,
so in the ``--preload`` master), to widen the window in which a SIGTERM from
the master used to be lost."""

import os
import time

os.register_at_fork(after_in_child=lambda: time.sleep(float(os.environ.get("SLOW_BOOT_S", "1"))))


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
