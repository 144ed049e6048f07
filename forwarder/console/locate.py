"""Where an event is now: queued, held by a worker, waiting to retry, delivered,
dead-lettered, or nowhere to be seen. docs/lifecycle.md lists the places.

Everything is read, nothing moved. The reads are not one atomic snapshot (the
queue can be long): an event that moves while it is looked for can be seen
in two places or, rarely, in none; looking again settles it. The queue is
read in pages from its consuming end, and no further than ``QUEUE_SCAN_MAX``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from forwarder import constants as C
from forwarder.messages import event_id_for, is_event_id
from forwarder.relay import scoped_idempotency_key
from forwarder.scripts import script
from forwarder.store import Store, dedupe_member, text

_DELIVERED_WHEN = script("delivered_when", package="forwarder.console")
QUEUE_SCAN_MAX = 200_000
QUEUE_PAGE = 2000


@dataclass
class Place:
    """One place the event was found in."""

    state: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Location:
    event_id: str
    places: list[Place]
    queue_depth: int
    queue_scanned: int

    @property
    def queue_complete(self) -> bool:
        return self.queue_scanned >= self.queue_depth


def event_id_of(query: str, client: str | None = None) -> tuple[str, str]:
    """The event id a query names, and how it was read: an event id as it is,
    anything else as an idempotency key (scoped to a relay client if given)."""
    query = query.strip()
    if is_event_id(query.lower()) and client is None:
        return query.lower(), "event id"
    if client:
        key = scoped_idempotency_key(client, query)
        return event_id_for(key), f"idempotency key {query!r} sent to the relay by {client!r}"
    return event_id_for(query), f"idempotency key {query!r} given to capture()"


def locate(store: Store, event_id: str,
           queue_scan_max: int = QUEUE_SCAN_MAX) -> Location:
    needle = f'"id":"{event_id}"'
    places: list[Place] = []
    ns = store.namespace
    # Held by a worker (its held hash or landing list) or in a POST right now.
    workers = {w.id: w for w in store.workers()}
    for worker_id, worker in workers.items():
        held = store.client.hvals(store.held_prefix + worker_id)
        landing = store.client.lrange(C.key(ns, C.LANDING_PREFIX) + worker_id, 0, -1)
        if any(needle in text(item) for item in [*held, *landing]):
            places.append(Place("held by a worker", _worker(worker_id, worker.info),
                                {"worker": worker_id}))
    claimed_until = store.client.zscore(C.key(ns, C.CLAIMS), event_id)
    seconds, micros = store.client.time()
    if claimed_until is not None and claimed_until > seconds * 1e6 + micros:
        # The claim belongs to the chunk whose token has the same score.
        tokens = store.client.zrangebyscore(C.key(ns, C.CLAIM_TOKENS), claimed_until,
                                            claimed_until)
        worker_id = text(tokens[0]).partition("|")[0] if tokens else "?"
        info = workers[worker_id].info if worker_id in workers else {}
        places.append(Place("being sent", "a POST to Distinct is in progress by "
                            + _worker(worker_id, info), {"worker": worker_id}))
    # Waiting to retry: members of the retry set are events, their id first.
    for member, score in store.client.zscan_iter(store.retry_key, match=f"*{needle}*",
                                                 count=1000):
        event = _json(member)
        places.append(Place("waiting to retry", f"attempt {event.get('attempts', '?')} "
                            "failed; due again", {"due": float(score),
                                                  "attempts": event.get("attempts")}))
    entry = store.dlq_get([event_id])[0]
    if entry is not None:
        places.append(Place("dead-lettered", f"reason {entry.get('reason')}",
                            {"entry": entry}))
    if store.is_delivered(event_id):
        places.append(Place("delivered", "Distinct accepted it",
                            {"span": delivered_when(store, event_id)}))
    depth, scanned, position = _find_in_queue(store, needle, queue_scan_max)
    if position is not None:
        places.insert(0, Place("queued", f"{position:,} events ahead of it",
                               {"position": position}))
    return Location(event_id, places, depth, scanned)


def delivered_when(store: Store, event_id: str) -> tuple[float, float] | None:
    """(start, length) of the span of time in which Distinct accepted the id, as
    the dedupe window's sets tell it (forwarder/lua/lib/dedupe.lua keeps one set
    per span); None when they do not hold it. Whether it was delivered is
    ``Store.is_delivered``'s answer: this only dates it."""
    found = _DELIVERED_WHEN(store.client, **_dedupe_keys(store),
                            member=dedupe_member(event_id), dedupe_ttl=store.dedupe_ttl)
    return (float(found[0]), float(found[1])) if found else None


def _dedupe_keys(store: Store) -> dict[str, str]:
    return {"dedupe_prefix": C.key(store.namespace, C.DEDUPE_PREFIX),
            "legacy_dedupe_prefix": C.key(store.namespace, C.LEGACY_DEDUPE_PREFIX)}


def _find_in_queue(store: Store, needle: str, limit: int) -> tuple[int, int, int | None]:
    """(queue depth, items read, events ahead of the one found or None)."""
    depth = store.queue_depth()
    scanned = 0
    while scanned < min(depth, limit):
        # The consuming end is the right one: -1 is the next event out.
        page = store.client.lrange(store.queue_key, -(scanned + QUEUE_PAGE), -(scanned + 1))
        if not page:
            break
        for offset, item in enumerate(reversed(page)):
            if needle in text(item):
                return depth, scanned + offset + 1, scanned + offset
        scanned += len(page)
    return depth, scanned, None


def _worker(worker_id: str, info: dict[str, str]) -> str:
    host, pid = info.get("host"), info.get("pid")
    return f"worker {worker_id}" + (f" ({host}, pid {pid})" if host and pid else "")


def _json(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
