"""Flask: capture an analytics event from a view.

Run it (a Redis on REDIS_URL, workers deliver what it captures):

    REDIS_URL=redis://localhost:6379/0 DISTINCT_EXPERIENCE=fifa-cwc-2025 \\
        flask --app docs/examples/flask_app.py run
    curl -X POST localhost:5000/photos/evt-42/views -H 'Content-Type: application/json' \\
        -d '{"email": "john.doe@example.com"}'
"""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from forwarder import EnqueueError, Forwarder, InvalidEvent


def create_app(fwd: Forwarder | None = None) -> Flask:
    """The app; ``fwd`` defaults to a Forwarder configured by the environment."""
    app = Flask(__name__)
    # One Forwarder per app, shared by every request and thread: it holds a
    # Redis connection pool (reopened by itself in each gunicorn worker).
    app.extensions["distinct_forwarder"] = fwd or Forwarder.from_env()

    @app.post("/photos/<photo_id>/views")
    def photo_viewed(photo_id: str) -> ResponseReturnValue:
        payload = request.get_json(silent=True) or {}
        forwarder: Forwarder = app.extensions["distinct_forwarder"]
        try:
            event_id = forwarder.capture({
                "type": "PHOTO_VIEWED_BY_USER",
                "eventValue": photo_id,
                "recordCapturedAt": datetime.now(timezone.utc),
                "email": payload.get("email"),
            })
        except InvalidEvent as exc:
            # exc.errors names each bad field: {"email": ["Not a valid email address."]}
            return jsonify(errors=exc.errors), 400
        except EnqueueError:
            # Redis (and the local spool) did not take it: the event was not accepted.
            return jsonify(error="analytics unavailable, try again"), 503
        # Once capture() returns, the event is in Redis; a worker delivers it.
        return jsonify(eventId=event_id), 202

    return app
