"""Django: send the event only once the transaction that records it commits.

A single-file project (settings, URLs, view). Run it:

    REDIS_URL=redis://localhost:6379/0 DISTINCT_EXPERIENCE=fifa-cwc-2025 \\
        python docs/examples/django_app.py runserver
    curl -X POST localhost:8000/photos/evt-42/views -H 'Content-Type: application/json' \\
        -d '{"email": "john.doe@example.com"}'

In a real project the settings go in settings.py, ``get_forwarder`` in a
module of your app (analytics.py), and the view in views.py.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from functools import lru_cache, partial

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=os.environ.get("DJANGO_DEBUG") == "1",
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": os.environ.get("EXAMPLE_DB", ":memory:")}},
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
    )
    django.setup()

# Django's own modules after settings.configure(): some read settings on import.
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from forwarder import Forwarder
from forwarder.producer import validate_event

EXPERIENCE = os.environ.get("DISTINCT_EXPERIENCE", "fifa-cwc-2025")


@lru_cache(maxsize=1)
def get_forwarder() -> Forwarder:
    """One Forwarder per process, configured by the environment."""
    return Forwarder.from_env()


class PhotoMissing(Exception):
    pass


def record_view(photo_id: str, email: str) -> None:
    """Stands in for your model's save(): a write inside the transaction."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS photo_view (photo TEXT, email TEXT)")
        cursor.execute("INSERT INTO photo_view VALUES (%s, %s)", [photo_id, email])
    if photo_id.startswith("missing"):
        raise PhotoMissing(photo_id)  # rolls the insert back: no event either


@csrf_exempt  # an API endpoint for the example; keep CSRF on for browser forms
@require_POST
def photo_viewed(request: HttpRequest, photo_id: str) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    event = {
        "type": "PHOTO_VIEWED_BY_USER",
        "eventValue": photo_id,
        "recordCapturedAt": datetime.now(timezone.utc),
        "email": payload.get("email"),
    }
    # Validate now, while the client can still be told; enqueue after commit.
    _, errors = validate_event("capture", event, EXPERIENCE)
    if errors:
        return JsonResponse({"errors": errors}, status=400)
    try:
        with transaction.atomic():
            record_view(photo_id, event["email"])
            # Runs only if this transaction commits: a rolled-back view sends
            # nothing, and the worker never sees a row that does not exist.
            # robust=True: a failure to enqueue is logged and does not turn
            # an already committed request into an error page.
            transaction.on_commit(partial(get_forwarder().capture, event, EXPERIENCE),
                                  robust=True)
    except PhotoMissing:
        return JsonResponse({"error": "no such photo"}, status=404)
    return JsonResponse({"status": "recorded"}, status=202)


urlpatterns = [path("photos/<str:photo_id>/views", photo_viewed)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
