"""FastAPI: capture an analytics event from an ``async def`` endpoint.

Run it (a Redis on REDIS_URL, workers deliver what it captures):

    REDIS_URL=redis://localhost:6379/0 DISTINCT_EXPERIENCE=fifa-cwc-2025 \\
        uvicorn --app-dir docs/examples fastapi_app:app
    curl -X POST localhost:8000/photos/evt-42/views -H 'Content-Type: application/json' \\
        -d '{"email": "john.doe@example.com"}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from forwarder import AsyncForwarder, EnqueueError, InvalidEvent


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One AsyncForwarder per worker process, configured by the environment; leaving
    # the block closes its Redis connections on this event loop.
    async with AsyncForwarder.from_env() as fwd:
        app.state.forwarder = fwd
        yield


app = FastAPI(title="distinct-forwarder FastAPI example", lifespan=lifespan)


def get_forwarder(request: Request) -> AsyncForwarder:
    """The app's AsyncForwarder (tests override this dependency)."""
    forwarder: AsyncForwarder = request.app.state.forwarder
    return forwarder


class PhotoView(BaseModel):
    email: str


class Accepted(BaseModel):
    eventId: str


# ``async def`` and ``await``: the LPUSH is awaited, and the spool (if Redis is
# down) is written in a thread, so the event loop never waits on either.
@app.post("/photos/{photo_id}/views", status_code=202)
async def photo_viewed(
    photo_id: str, view: PhotoView, fwd: Annotated[AsyncForwarder, Depends(get_forwarder)]
) -> Accepted:
    try:
        event_id = await fwd.capture({
            "type": "PHOTO_VIEWED_BY_USER",
            "eventValue": photo_id,
            "recordCapturedAt": datetime.now(timezone.utc),
            "email": view.email,
        })
    except InvalidEvent as exc:
        # exc.errors names each bad field: {"email": ["Not a valid email address."]}
        raise HTTPException(status_code=400, detail=exc.errors) from None
    except EnqueueError:
        raise HTTPException(status_code=503, detail="analytics unavailable") from None
    return Accepted(eventId=event_id)
