"""Dead-letter queue tools: list, show, replay and purge entries.

A replay pushes the event back to the queue and removes its entry in one
atomic step (``Store.dlq_replay``): an entry leaves the DLQ only once its
event is back in the queue, and replaying the same entry twice, even from two
terminals at once, pushes it once. An entry whose event was delivered in the
meantime is dropped as skipped rather than sent again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forwarder.config import is_valid_slug
from forwarder.errors import EntryNotFound
from forwarder.messages import Event, build_message
from forwarder.store import Store

REPLAY_CHUNK = 100
#: Fields a DLQ entry must have to be imported.
REQUIRED_FIELDS = ("id", "kind", "body", "reason")


@dataclass
class Selector:
    """Which entries a command acts on; every given criterion must match."""

    ids: list[str] | None = None
    reason: str | None = None
    status: int | None = None
    event_type: str | None = None
    experience: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None

    def _matches(self, entry: dict[str, Any]) -> bool:
        body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
        return (
            (self.reason is None or entry.get("reason") == self.reason)
            and (self.status is None or entry.get("last_status") == self.status)
            and (self.event_type is None
                 or (body or {}).get("type", entry.get("kind")) == self.event_type)
            and (self.experience is None or entry.get("experience") == self.experience)
        )

    def _needs_entries(self) -> bool:
        return any(v is not None for v in (self.status, self.event_type, self.experience)) or (
            self.ids is not None and any(
                v is not None for v in (self.reason, self.since, self.until)))

    def resolve(self, store: Store) -> list[str]:
        """The matching ids, oldest first (in the given order for explicit ids)."""
        if self.ids is not None:
            candidates = list(self.ids)
        else:
            candidates = store.dlq_ids(self.since, self.until, self.reason)
        if not self._needs_entries():
            return candidates[: self.limit] if self.limit is not None else candidates
        chosen: list[str] = []
        for chunk in _chunks(candidates, 500):
            for entry_id, entry in zip(chunk, store.dlq_get(chunk), strict=True):
                if entry is None or not self._matches(entry):
                    continue
                dead_at = float(entry.get("dead_at") or 0)
                if self.since is not None and dead_at < self.since:
                    continue
                if self.until is not None and dead_at > self.until:
                    continue
                chosen.append(entry_id)
                if self.limit is not None and len(chosen) >= self.limit:
                    return chosen
        return chosen


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
    rate: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Replay ``ids`` (every entry when None), in atomic chunks.

    Each chunk is one Lua call, so an interrupted replay leaves every entry
    either queued (and gone from the DLQ) or untouched: running it again
    resumes where it stopped. ``rate`` paces it in entries per second.
    """
    report = ReplayReport()
    targets = list(ids) if ids is not None else store.dlq_ids()
    chunk_size = REPLAY_CHUNK if not rate else max(1, min(REPLAY_CHUNK, int(rate)))
    started = time.monotonic()
    done = 0
    for chunk in _chunks(targets, chunk_size):
        if rate:
            ahead = done / rate - (time.monotonic() - started)
            if ahead > 0:
                sleep(ahead)
        done += len(chunk)
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


def export_lines(store: Store, ids: Sequence[str]) -> Iterable[str]:
    """One JSON line per entry, for ``dlq export``."""
    for chunk in _chunks(ids, 500):
        for entry in store.dlq_get(chunk):
            if entry is not None:
                yield json.dumps(entry, separators=(",", ":"), sort_keys=True)


def parse_import(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries from JSONL, and one error per bad line (naming line and field)."""
    entries: list[dict[str, Any]] = []
    errors: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            errors.append(f"line {number}: not JSON ({exc})")
            continue
        if not isinstance(entry, dict):
            errors.append(f"line {number}: must be a JSON object")
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in entry]
        if missing:
            errors.append(f"line {number}: {', '.join(missing)}: missing")
        elif entry["kind"] not in ("capture", "user_analytics"):
            errors.append(f"line {number}: kind: must be capture or user_analytics")
        elif not isinstance(entry["body"], dict):
            errors.append(f"line {number}: body: must be a JSON object")
        elif entry["kind"] == "capture" and not is_valid_slug(str(entry.get("experience"))):
            errors.append(f"line {number}: experience: must match [A-Za-z0-9._-]{{1,128}}")
        else:
            entries.append(entry)
    return entries, errors


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
