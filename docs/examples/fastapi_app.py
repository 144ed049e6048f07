"""FastAPI: capture an analytics event from an endpoint.

Run it (a Redis on REDIS_URL, workers deliver what it captures):

    REDIS_URL=redis://localhost:6379/0 DISTINCT_EXPERIENCE=fifa-cwc-2025 \\
        uvicorn --app-dir docs/examples fastapi_app:app
    curl -X POST localhost:8000/photos/evt-42/views -H 'Content-Type: application/json' \\
        -d '{"email": "john.doe@example.com"}'
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

from forwarder import EnqueueError, Forwarder, InvalidEvent

app = FastAPI(title="distinct-forwarder FastAPI example")


@lru_cache(maxsize=1)
def get_forwarder() -> Forwarder:
    """One Forwarder per process, configured by the environment (tests override it)."""
    return Forwarder.from_env()


class PhotoView(BaseModel):
    email: str


class Accepted(BaseModel):
    eventId: str


# A plain ``def``: capture() is one short blocking Redis call, and FastAPI runs
# sync endpoints in its thread pool, so the event loop never waits on Redis.
@app.post("/photos/{photo_id}/views", status_code=202)
def photo_viewed(
    photo_id: str, view: PhotoView, fwd: Annotated[Forwarder, Depends(get_forwarder)]
) -> Accepted:
    try:
        event_id = fwd.capture({
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
