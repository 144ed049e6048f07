"""Storing what became of each held event: finish.lua, one call per group of outcomes.

Each outcome takes its event out of the worker's held batch in the same atomic
step that stores it (dedupe entry, retry set, DLQ entry), counts it and feeds
the circuit breaker, so there is no moment at which an event is neither held
nor stored. The delivery loop (workers/deliverer.py) stores each POST's
outcome before that thread's next POST, so a worker killed at any point leaves
at most one POST per thread to be sent twice; the outcomes of all threads
waiting at the same moment share one call (GroupCommit), so Redis sees one
round trip per group rather than per event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

import redis

from forwarder import constants as C
from forwarder.constants import DLQ_DETAIL_BYTES
from forwarder.messages import KINDS, Event, is_event_id
from forwarder.scripts import script
from forwarder.store import text
from workers.delivery import Outcome
from workers.gate import BreakerPolicy, Legacy

_FINISH = script("finish", "workers")
log = logging.getLogger("distinct_forwarder.delivery")

#: delivered: a dedupe entry. retried, deferred: back in the retry set after
#: ``delay``. dead_lettered: a DLQ entry. skipped: delivered before (dedupe
#: window), nothing to store. released: the claim only; the event stays held
#: (unsent, to be tried again by this task or handed back).
FinishOutcome = Literal["delivered", "retried", "deferred", "dead_lettered", "skipped",
                        "released"]


@dataclass(frozen=True)
class Finish:
    """One held event's outcome, as finish.lua takes it."""

    field: str
    event_id: str
    outcome: FinishOutcome
    #: delivered: the dedupe member; retried/deferred: the event; dead_lettered: the entry.
    payload: str | bytes = ""
    #: retried/deferred: delay in seconds (Redis clock); dead_lettered: dead_at.
    score: float = 0.0
    dlq_reason: str = ""
    #: What the outcome tells the breaker ('ok', 'fail', 'auth'); '' if nothing was sent.
    signal: str = ""
    breaker_reason: str = ""


class Outcomes:
    """finish.lua for one namespace and worker."""

    def __init__(self, client: redis.Redis, namespace: str, held_key: str,
                 policy: BreakerPolicy, dedupe_ttl: float = C.DEFAULT_DEDUPE_TTL,
                 legacy: Legacy | None = None):
        k = lambda name: C.key(namespace, name)  # noqa: E731
        self.client = client
        self.namespace = namespace
        self.dedupe_ttl = dedupe_ttl
        self.legacy = legacy or Legacy()
        self.keys = {
            "held": held_key, "claims": k(C.CLAIMS), "claim_tokens": k(C.CLAIM_TOKENS),
            "legacy_claim_prefix": k(C.LEGACY_CLAIM_PREFIX),
            "stats_prefix": k(C.STATS_PREFIX), "dedupe_prefix": k(C.DEDUPE_PREFIX),
            "retry": k(C.RETRY_SET), "dlq": k(C.DLQ_ENTRIES), "dlq_index": k(C.DLQ_INDEX),
            "dlq_reason_prefix": k(C.DLQ_REASON_PREFIX), "breaker": k(C.BREAKER),
            "probe": k(C.BREAKER_PROBE), "window_prefix": k(C.BREAKER_WINDOW_PREFIX),
        }
        self.args = {"dedupe_ttl": dedupe_ttl, **policy.as_args()}

    def store(self, token: str | None, items: list[Finish], last: bool = False) -> list[str]:
        """Store outcomes atomically, in order; returns the breaker's changes.
        ``last``: the chunk of ``token`` ends with these; its claims are released."""
        return [c for c in self.store_groups([(token or "", items, last)])[0] if c]

    def store_groups(self, groups: list[tuple[str, list[Finish], bool]]) -> list[list[str]]:
        """Several chunks' outcomes (each with its claim token, and whether they end
        its chunk) in one atomic call; returns, per group, the breaker change each
        outcome caused ('' for none)."""
        legacy = self.legacy.state(self.client, self.namespace, self.dedupe_ttl)
        flat: list[Any] = []
        for token, items, last in groups:
            if has_work(token, items, last):
                flat += [token, len(items), "1" if last else "0"]
                for f in items:
                    flat += _finish_args(f, compact=not legacy.claims)
        if not flat:
            return [[] for _ in groups]
        reply = _FINISH(self.client, **self.keys, **self.args,
                        legacy_claims=int(legacy.claims), rest=flat)
        changes = [""] * sum(len(items) for _, items, _ in groups)
        for position, change in zip(reply[::2], reply[1::2], strict=True):
            changes[int(position) - 1] = text(change)
        out, start = [], 0
        for _, items, _ in groups:
            out.append(changes[start:start + len(items)])
            start += len(items)
        return out


def has_work(token: str | None, items: list[Finish], last: bool) -> bool:
    """Whether finish.lua has anything to do for a group: outcomes, or the end of a
    chunk that may hold claims."""
    return bool(items) or (last and bool(token))


def _finish_args(f: Finish, compact: bool) -> list[Any]:
    """One outcome as finish.lua reads it: the usual delivery in 3 values, the rest in 8."""
    if compact and f.outcome == "delivered" and f.signal == "ok" and not f.breaker_reason:
        return ["d", f.field, f.payload]
    return [f.outcome, f.field, f.event_id, f.payload, repr(f.score), f.dlq_reason, f.signal,
            f.breaker_reason]


class GroupCommit:
    """The outcomes of every delivery thread of a process, stored together.

    A thread hands over its outcomes and waits until they are stored, as
    before its next POST it must; one writer thread stores everything handed
    over meanwhile in one finish.lua call. Redis answers one call per group
    instead of one per event: with 96 threads each waiting on its POST, most
    outcomes share a call with others (a database's group commit). While other
    threads are in a POST (``in_post``), the writer waits for their outcomes
    up to LINGER_SECONDS: a few milliseconds added to a POST cycle that the
    threads spend waiting on Distinct anyway, for several times fewer calls.
    """

    #: The most outcomes in one call; the rest wait for the next.
    MAX_OUTCOMES = 256
    #: A thread waits this long for its group at most, then treats it as a
    #: Redis timeout (its caller retries, as for any Redis error).
    WAIT_SECONDS = 60.0
    #: The longest a group waits for the outcomes of POSTs in flight.
    LINGER_SECONDS = 0.002

    def __init__(self, outcomes: Outcomes, in_post: Callable[[], int] = lambda: 0):
        self.outcomes = outcomes
        self.in_post = in_post
        self._pending: list[tuple[str, list[Finish], bool, Future[list[str]]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.calls = 0

    def store(self, token: str | None, items: list[Finish], last: bool = False) -> list[str]:
        """Store ``items`` (in one group with others); returns the breaker's changes.
        ``last``: the chunk of ``token`` ends with these (Outcomes.store)."""
        if not has_work(token, items, last):
            return []
        future: Future[list[str]] = Future()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="outcome-writer",
                                                daemon=True)
                self._thread.start()
            self._pending.append((token or "", items, last, future))
            self._cond.notify()
        try:
            return future.result(self.WAIT_SECONDS)
        except FutureTimeout:
            raise redis.TimeoutError("outcomes not stored in time") from None

    def _next_group(self) -> list[tuple[str, list[Finish], bool, Future[list[str]]]]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            linger_until = time.monotonic() + self.LINGER_SECONDS
            while (self.in_post() > 0 and self._size() < self.MAX_OUTCOMES
                   and (left := linger_until - time.monotonic()) > 0):
                self._cond.wait(left)
            group: list[tuple[str, list[Finish], bool, Future[list[str]]]] = []
            size = 0
            while self._pending and (not group or size + len(self._pending[0][1])
                                     <= self.MAX_OUTCOMES):
                entry = self._pending.pop(0)
                group.append(entry)
                size += len(entry[1])
            return group

    def _size(self) -> int:
        return sum(len(entry[1]) for entry in self._pending)

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            try:
                results = self.outcomes.store_groups([(token, items, last)
                                                      for token, items, last, _ in group])
                self.calls += 1
            except BaseException as exc:  # each waiting thread decides what to do
                for *_, future in group:
                    future.set_exception(exc)
                continue
            for (*_, future), changes in zip(group, results, strict=True):
                future.set_result([c for c in changes if c])


def dead_letter_entry(event: Event, outcome: Outcome | None, reason: str, now: float,
                      detail: str | None = None) -> dict[str, Any]:
    """A DLQ entry: everything needed to judge and replay, never the API key."""
    return {
        "id": event["id"],
        "kind": event["kind"],
        "experience": event.get("experience"),
        "body": event["body"],
        "attempts": event["attempts"],
        "first_seen": event["first_seen"],
        "last_attempt": now if outcome is not None else None,
        "last_status": outcome.status if outcome is not None else None,
        "last_error": (detail if detail is not None else
                       outcome.detail if outcome is not None else "")[:DLQ_DETAIL_BYTES],
        "reason": reason,
        "dead_at": now,
    }


def dead_letter(field: str, entry: dict[str, Any], signal: str = "",
                breaker_reason: str = "") -> Finish:
    """The Finish that stores ``entry`` in the dead-letter queue."""
    return Finish(field, entry["id"], "dead_lettered", json.dumps(entry, separators=(",", ":")),
                  float(entry["dead_at"]), entry["reason"], signal, breaker_reason)


def readable_parts(raw: bytes) -> dict[str, Any]:
    """The parts of a malformed item that are of the right type, to keep in its entry."""
    try:
        item = json.loads(raw)
    except Exception:  # not JSON, too deep, anything: nothing is readable
        return {}
    if not isinstance(item, dict):
        return {}
    parts: dict[str, Any] = {}
    if is_event_id(item.get("id")):
        parts["id"] = item["id"]
    if item.get("kind") in KINDS:
        parts["kind"] = item["kind"]
    if isinstance(item.get("experience"), str) and len(item["experience"]) <= 128:
        parts["experience"] = item["experience"]
    if isinstance(item.get("body"), dict):
        parts["body"] = item["body"]
    return parts


def log_delivered(delivered: list[tuple[Event, Outcome]]) -> None:
    """One line for the events of a chunk that Distinct took, naming each id."""
    if not delivered:
        return
    if len(delivered) == 1:
        event, outcome = delivered[0]
        log.info("delivered id=%s kind=%s status=%s attempts=%d ms=%.0f", event["id"],
                 event["body"].get("type") or event["kind"], outcome.status,
                 event["attempts"] + 1, outcome.elapsed * 1000)
        return
    ids = [event["id"] for event, _ in delivered]
    slowest = max(outcome.elapsed for _, outcome in delivered) * 1000
    log.info("delivered %d events (slowest %.0f ms): id=%s", len(ids), slowest, ",".join(ids),
             extra={"fields": {"ids": ids}})


def breaker_signal(outcome: Outcome) -> tuple[str, str]:
    """What an outcome tells the circuit breaker about Distinct's health."""
    if outcome.verdict in ("delivered", "rejected"):
        return "ok", ""
    if outcome.verdict == "deployment":
        return "auth", "auth" if outcome.status in (401, 403) else "deployment"
    return "fail", "transient"


def hint(outcome: Outcome) -> str:
    if outcome.status in (401, 403):
        return "Distinct refused the API key (check DISTINCT_API_KEY)"
    if outcome.verdict == "deployment":
        return "deployment problem (check DISTINCT_API_URL and TLS)"
    return "transient"
