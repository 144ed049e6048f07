"""Starlette: capture an analytics event from an async endpoint.

Run it (a Redis on REDIS_URL, workers deliver what it captures):

    REDIS_URL=redis://localhost:6379/0 DISTINCT_EXPERIENCE=fifa-cwc-2025 \\
        uvicorn --app-dir docs/examples starlette_app:app
    curl -X POST localhost:8000/photos/evt-42/views -H 'Content-Type: application/json' \\
        -d '{"email": "john.doe@example.com"}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from forwarder import AsyncForwarder, EnqueueError, InvalidEvent


async def photo_viewed(request: Request) -> JSONResponse:
    try:
        payload: Any = await request.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    fwd: AsyncForwarder = request.app.state.forwarder
    try:
        event_id = await fwd.capture({
            "type": "PHOTO_VIEWED_BY_USER",
            "eventValue": request.path_params["photo_id"],
            "recordCapturedAt": datetime.now(timezone.utc),
            "email": payload.get("email"),
        })
    except InvalidEvent as exc:
        # exc.errors names each bad field: {"email": ["Not a valid email address."]}
        return JSONResponse({"errors": exc.errors}, status_code=400)
    except EnqueueError:
        # Redis (and the local spool) did not take it: the event was not accepted.
        return JSONResponse({"error": "analytics unavailable, try again"}, status_code=503)
    # Once the await returns, the event is in Redis (or fsynced in the local spool).
    return JSONResponse({"eventId": event_id}, status_code=202)


def create_app(fwd: AsyncForwarder | None = None) -> Starlette:
    """The app; ``fwd`` defaults to an AsyncForwarder configured by the environment,
    built at startup."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Leaving the block closes the forwarder's Redis connections on this loop.
        async with fwd or AsyncForwarder.from_env() as forwarder:
            app.state.forwarder = forwarder
            yield

    return Starlette(routes=[Route("/photos/{photo_id}/views", photo_viewed,
                                   methods=["POST"])], lifespan=lifespan)


app = create_app()
