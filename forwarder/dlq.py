"""Dead-letter queue tools: list, show, replay and purge entries.

A replay pushes the event back to the queue and removes its entry in one
atomic step (``Store.dlq_replay``): an entry leaves the DLQ only once its
event is back in the queue, and replaying the same entry twice, even from two
terminals at once, pushes it once. An entry whose event was delivered in the
meantime is dropped as skipped rather than sent again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forwarder.errors import EntryNotFound
from forwarder.messages import Event, build_message
from forwarder.store import Store

REPLAY_CHUNK = 100


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def entries(store: Store, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entries for ``ids`` (all of them, oldest first, when None)."""
    wanted = list(ids) if ids is not None else store.dlq_ids()
    found = store.dlq_get(wanted)
    if ids is not None:
        missing = [i for i, e in zip(wanted, found, strict=True) if e is None]
        if missing:
            raise EntryNotFound(missing[0])
    return [e for e in found if e is not None]


def get(store: Store, entry_id: str) -> dict[str, Any]:
    return entries(store, [entry_id])[0]


def replay_message(entry: dict[str, Any], now: float) -> str:
    """The queue message that gives ``entry``'s event a fresh start."""
    event = Event(
        id=entry["id"], kind=entry["kind"], experience=entry.get("experience"),
        body=entry["body"], attempts=0, first_seen=now,
    )
    return build_message([event])


def replay(
    store: Store,
    ids: Sequence[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> ReplayReport:
    """Replay ``ids`` (every entry when None), in chunks of REPLAY_CHUNK."""
    report = ReplayReport()
    targets = list(ids) if ids is not None else store.dlq_ids()
    for chunk in _chunks(targets, REPLAY_CHUNK):
        found = store.dlq_get(chunk)
        pairs = []
        for entry_id, entry in zip(chunk, found, strict=True):
            if entry is None:
                report.missing.append(entry_id)
            else:
                pairs.append((entry_id, replay_message(entry, clock())))
        for (entry_id, _), state in zip(pairs, store.dlq_replay(pairs), strict=True):
            getattr(report, state).append(entry_id)
        if on_progress:
            on_progress(len(chunk))
    return report


def purge(store: Store, ids: Sequence[str] | None = None) -> int:
    """Delete ``ids`` (every entry when None); returns how many were removed."""
    targets = list(ids) if ids is not None else store.dlq_ids()
    return sum(store.dlq_delete(chunk) for chunk in _chunks(targets, 500))


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
