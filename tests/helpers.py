"""Helpers shared by tests: events in the queue's format, outcomes stored as a worker would."""

from __future__ import annotations

import json
import time
from typing import Any

from forwarder import constants as C
from forwarder.messages import encode_event, random_uuid
from forwarder.store import Store, text
from tests.conftest import capture_event
from workers.gate import BreakerPolicy
from workers.outcomes import Finish, Outcomes, dead_letter

#: The held hash the helpers use, as if one worker named "test-worker" held events.
HELD_WORKER = "test-worker"


def event(i: int = 0, **changes: Any) -> dict[str, Any]:
    """A valid queue event (capture) with a fresh UUID id."""
    return {"id": random_uuid(), "kind": "capture", "experience": "fifa-cwc-2025",
            "body": {**capture_event(i), "recordCapturedAt": "2026-11-28T10:15:00.000Z"},
            "attempts": 0, "first_seen": time.time(), **changes}


def item(i: int = 0, **changes: Any) -> str:
    return encode_event(event(i, **changes))  # type: ignore[arg-type]


def outcomes(store: Store, policy: BreakerPolicy | None = None) -> Outcomes:
    return Outcomes(store.client, store.namespace, held_key(store), policy or BreakerPolicy(),
                    store.dedupe_ttl)


def held_key(store: Store) -> str:
    return f"{store.namespace}:held:{HELD_WORKER}"


def store_outcomes(store: Store, finishes: list[Finish], token: str = "",
                   policy: BreakerPolicy | None = None, last: bool = True) -> list[str]:
    """Store outcomes through finish.lua, each event held first as a worker holds it;
    ``last``: they end the chunk of ``token`` (its claims are released)."""
    for finish in finishes:
        store.client.hset(held_key(store), finish.field, "held")
    return outcomes(store, policy).store(token, finishes, last)


def claimed(store: Store) -> dict[str, str]:
    """Each event id with a live claim (workers/lua/lib/claims.lua, on Redis's clock),
    and the token of the chunk that holds it: the token with the claim's score."""
    seconds, micros = store.client.time()
    live = f"({seconds * 1_000_000 + micros}"
    tokens = {score: text(token) for token, score in store.client.zrangebyscore(
        C.key(store.namespace, C.CLAIM_TOKENS), live, "+inf", withscores=True)}
    return {text(event_id): tokens.get(score, "(no token)")
            for event_id, score in store.client.zrangebyscore(
                C.key(store.namespace, C.CLAIMS), live, "+inf", withscores=True)}


def dead_letter_entry(i: int = 0, reason: str = "rejected", status: int | None = 400,
                      **changes: Any) -> dict[str, Any]:
    now = time.time()
    entry = {"id": random_uuid(), "kind": "capture", "experience": "fifa-cwc-2025",
             "body": {**capture_event(i), "recordCapturedAt": "2026-11-28T10:15:00.000Z",
                      "email": "john.doe@example.com"},
             "attempts": 1, "first_seen": now, "last_attempt": now, "last_status": status,
             "last_error": "bad", "reason": reason, "dead_at": now}
    entry.update(changes)
    return entry


def add_dead_letter(store: Store, entry: dict[str, Any]) -> str:
    """Dead-letter ``entry`` the way a worker does (counted in the per-minute stats)."""
    store_outcomes(store, [dead_letter(f"f-{entry['id']}", entry)])
    return str(entry["id"])


def queued(store: Store) -> list[dict[str, Any]]:
    """The queue's events, oldest (next out) first."""
    return [json.loads(raw) for raw in reversed(store.client.lrange(store.queue_key, 0, -1))]
