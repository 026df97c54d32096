"""A one-file Django project for the web tests: ``django_app:application``.

Routes: ``/items/<int:item_id>`` (``?log=1`` logs a line), ``/fail`` (raises),
``/health`` (the app's own, which must win over otel-render's), ``/slow?ms=``.
No OpenTelemetry code.
"""

import json
import logging
import time

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only-not-secret",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        LOGGING_CONFIG=None,
    )

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse, JsonResponse
from django.urls import path

log = logging.getLogger("django_app")


def item(request, item_id):
    if request.GET.get("log"):
        log.warning("item %s looked up", item_id)
    return JsonResponse({"id": item_id})


def fail(request):
    raise RuntimeError("django view failed: password=hunter2")


def own_health(request):
    return HttpResponse(json.dumps({"mine": True}), content_type="application/json")


def slow(request):
    time.sleep(int(request.GET.get("ms", "100")) / 1000)
    return JsonResponse({"slept": True})


urlpatterns = [
    path("items/<int:item_id>", item),
    path("fail", fail),
    path("health", own_health),
    path("slow", slow),
]

application = get_wsgi_application()
