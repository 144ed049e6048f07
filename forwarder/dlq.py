"""Dead-letter queue tools: list, show, replay and purge entries.

A replay requeues the event and removes its entry in one atomic step
(``Store.dlq_replay``): an entry leaves the DLQ only once its event is back
in the queue, and replaying the same entry twice, even from two terminals at
once, queues it once. An entry whose event was delivered in the meantime is
dropped as skipped rather than sent again.

An import checks every line of the file (strict JSON, every field, the body
by the same rules as ``capture()``) before it writes anything.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from forwarder.config import parse_duration
from forwarder.constants import DLQ_DETAIL_BYTES
from forwarder.errors import EntryNotFound, InvalidEvent
from forwarder.messages import KINDS, MAX_ATTEMPTS_FIELD, Event, encode_event, is_event_id
from forwarder.rawjson import loads_event
from forwarder.store import DLQ_REASONS, Store
from forwarder.validation import validate_event

REPLAY_CHUNK = 100
#: A page reads candidates in chunks of this many entries...
PAGE_CHUNK = 200
#: ...and examines at most this many per page, so a filter that matches little
#: still answers quickly (the page offers to look further).
PAGE_SCAN_LIMIT = 5000
#: The fields of a dead-letter entry; an import refuses any other.
ENTRY_FIELDS = ("id", "kind", "experience", "body", "attempts", "first_seen", "last_attempt",
                "last_status", "last_error", "reason", "dead_at")
#: An entry's line: its body (at most 64 KiB) and the detail it keeps.
MAX_LINE_BYTES = 80 * 1024
#: A time this far ahead of this host's clock is not a clock skew but a wrong value.
MAX_AHEAD_SECONDS = 86400.0


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
    #: Free text, found (case-insensitively) in the event id or its eventValue.
    search: str | None = None

    def _matches(self, entry: dict[str, Any]) -> bool:
        body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
        return (
            (self.reason is None or entry.get("reason") == self.reason)
            and (self.status is None or entry.get("last_status") == self.status)
            and (self.event_type is None
                 or (body or {}).get("type", entry.get("kind")) == self.event_type)
            and (self.experience is None or entry.get("experience") == self.experience)
            and (self.search is None or self._found(entry, body or {}))
        )

    def _found(self, entry: dict[str, Any], body: dict[str, Any]) -> bool:
        wanted = (self.search or "").casefold()
        value = body.get("eventValue")
        return wanted in str(entry.get("id", "")).casefold() or (
            isinstance(value, str) and wanted in value.casefold())

    def _needs_entries(self) -> bool:
        content = (self.status, self.event_type, self.experience, self.search)
        return any(v is not None for v in content) or (
            self.ids is not None and any(
                v is not None for v in (self.reason, self.since, self.until)))

    def page(self, store: Store, start: int = 0, size: int = 50,
             scan_limit: int = PAGE_SCAN_LIMIT) -> Page:
        """Matching entries, newest first, from position ``start`` of the index
        window (reason, since, until); ``limit`` and ``ids`` do not apply.

        What one page costs is bounded by its size (and ``scan_limit`` for a
        filter on the entries' contents), never by the size of the DLQ.
        """
        since, until, reason = self.since, self.until, self.reason
        candidates = store.dlq_count(since, until, reason)
        if not self._needs_entries():
            ids = store.dlq_page_ids(start, size, since, until, reason)
            found = [e for e in store.dlq_get(ids) if e is not None]
            end = start + len(ids)
            return Page(found, start, end if end < candidates else None, candidates,
                        len(ids), exact=True)
        found, position = [], start
        while len(found) < size and position < candidates and position - start < scan_limit:
            chunk = store.dlq_page_ids(position, PAGE_CHUNK, since, until, reason)
            if not chunk:
                break
            for entry in store.dlq_get(chunk):
                position += 1
                if entry is not None and self._matches(entry):
                    found.append(entry)
                    if len(found) >= size:
                        break
        return Page(found, start, position if position < candidates else None, candidates,
                    position - start, exact=False)

    def resolve(self, store: Store) -> list[str]:
        """The matching ids, oldest first (in the given order for explicit ids)."""
        if self.ids is not None:
            candidates = list(self.ids)
        elif not self._needs_entries():
            return store.dlq_ids(self.since, self.until, self.reason, self.limit)
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
class Page:
    """One page of dead letters, and where the next one starts."""

    entries: list[dict[str, Any]]
    start: int
    #: Position of the first candidate the next page examines; None at the end.
    next_start: int | None
    #: Entries in the index window (reason and time range).
    candidates: int
    #: Candidates this page examined.
    scanned: int
    #: Whether every candidate matches (no filter on the entries' contents),
    #: so that ``candidates`` is the number of matches.
    exact: bool


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


def replay_item(entry: dict[str, Any], now: float) -> str:
    """The queue item that gives ``entry``'s event a fresh start."""
    event = Event(
        id=entry["id"], kind=entry["kind"], experience=entry.get("experience"),
        body=entry["body"], attempts=0, first_seen=now,
    )
    return encode_event(event)


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
            if entry is None or entry.get("reason") == "unreadable":
                report.missing.append(entry_id)
            else:
                pairs.append((entry_id, replay_item(entry, clock())))
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


def parse_import(lines: Iterable[str | bytes], now: float | None = None
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries from JSONL, and one error per bad line (naming line, field and rule).

    Nothing is written here: the caller imports only when ``errors`` is empty.
    """
    now = time.time() if now is None else now
    entries: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = check_entry(line, now)
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        if entry["id"] in seen:
            errors.append(f"line {number}: id: {entry['id']} is also on line {seen[entry['id']]}")
            continue
        seen[entry["id"]] = number
        entries.append(entry)
    return entries, errors


def check_entry(line: str | bytes, now: float) -> dict[str, Any]:
    """One line of ``dlq export`` checked field by field; ValueError names the problem."""
    try:
        raw = loads_event(line, max_bytes=MAX_LINE_BYTES)
    except InvalidEvent as exc:
        field, messages = sorted(exc.errors.items())[0]
        raise ValueError(f"not strict JSON: {messages[0]}" if field == "_event"
                         else f"{field}: {messages[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object (one dead-letter entry)")
    unknown = sorted(set(raw) - set(ENTRY_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a field of a dead-letter entry")
    for name in ("id", "kind", "body", "reason", "dead_at"):
        if name not in raw:
            raise ValueError(f"{name}: missing")
    if not is_event_id(raw["id"]):
        raise ValueError("id: must be an event id (a lower-case UUID)")
    if raw["kind"] not in KINDS:
        raise ValueError("kind: must be capture or user_analytics")
    if raw["reason"] not in DLQ_REASONS:
        raise ValueError(f"reason: must be one of {', '.join(DLQ_REASONS)}")
    experience = raw.get("experience")
    if raw["kind"] == "user_analytics" and experience is not None:
        raise ValueError("experience: must be null for user_analytics")
    body, problems = validate_event(raw["kind"], raw["body"], experience)
    if problems:
        field, messages = sorted(problems.items())[0]
        where = field if field == "experience" else f"body.{field}"
        raise ValueError(f"{where}: {messages[0]} (fix the event or leave the line out)")
    dead_at = _time(raw, "dead_at", now, required=True)
    first_seen = _time(raw, "first_seen", now) or dead_at
    last_attempt = _time(raw, "last_attempt", now)
    attempts = raw.get("attempts", 0)
    if type(attempts) is not int or not 0 <= attempts <= MAX_ATTEMPTS_FIELD:
        raise ValueError(f"attempts: must be a whole number from 0 to {MAX_ATTEMPTS_FIELD}")
    status = raw.get("last_status")
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        raise ValueError("last_status: must be an HTTP status (100-599) or null")
    detail = raw.get("last_error")
    if detail is not None and (not isinstance(detail, str) or len(detail) > DLQ_DETAIL_BYTES):
        raise ValueError(f"last_error: must be text of at most {DLQ_DETAIL_BYTES} characters")
    return {"id": raw["id"], "kind": raw["kind"], "experience": experience, "body": body,
            "attempts": attempts, "first_seen": first_seen, "last_attempt": last_attempt,
            "last_status": status, "last_error": detail, "reason": raw["reason"],
            "dead_at": dead_at}


def _time(raw: dict[str, Any], name: str, now: float, required: bool = False) -> float | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not 0 < value <= now + MAX_AHEAD_SECONDS):
        raise ValueError(f"{name}: must be a time in epoch seconds, not in the future")
    return float(value)


def parse_moment(value: str, now: float | None = None) -> float:
    """``2h`` (that long ago) or an ISO-8601 time (UTC when it has no zone), as
    ``--since``/``--until`` and the console's filter take it; ValueError otherwise."""
    try:
        return (time.time() if now is None else now) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value[:40]!r} is neither a duration (2h, 30m) nor an "
                         "ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
