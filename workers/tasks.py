"""The ``distinct.deliver`` task: claim, POST, then record the outcome in Redis.

The task never raises for a delivery problem: every event of its message
ends up delivered, in the retry set or in the dead-letter queue before the
message is acknowledged. Only when Redis itself cannot be reached does the
task reject its message back to the queue (or leave it for the visibility
timeout), which is at-least-once and safe because of the dedupe claim.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import redis
from celery import Celery
from celery.exceptions import Reject

from forwarder.config import Settings, is_valid_slug
from forwarder.constants import (
    BUSY_RETRY_DELAY,
    CHUNK_EVENTS,
    DLQ_DETAIL_BYTES,
    MESSAGE_BATCH,
    RATE_MAX_WAIT,
    TAKE_MESSAGES,
    TAKE_STOP_BEFORE_DEADLINE,
    TASK_BUDGET_SECONDS,
    TASK_NAME,
)
from forwarder.gate import Admission, BreakerPolicy, Gate, Signal, dedupe_member
from forwarder.logs import mask_email
from forwarder.messages import KINDS, Event, build_message, events_in_message
from forwarder.store import Finish, Store, connect, dead_letter_finish
from workers import metrics
from workers.delivery import DistinctClient, Outcome
from workers.retry import BackoffPolicy, DeadLetter, Delivered, Retry, decide

log = logging.getLogger("distinct_forwarder.delivery")
T = TypeVar("T")

#: How long a worker keeps trying Redis inside one task before handing the
#: whole message back: long enough to ride out a Redis restart.
REDIS_PATIENCE_SECONDS = 30.0
#: After an unexpected error (a bug), a message's events wait this long in the
#: retry set: not a hot loop, not lost.
ERROR_RETRY_DELAY = 60.0
#: How many times a thread waits for a rate-limit slot before parking the event.
RATE_WAIT_ROUNDS = 5


class Deliverer:
    """Delivers events for one worker process; shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        client: DistinctClient | None = None,
        gate: Gate | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        # A connection per delivery thread (_mine), plus room for the promoter
        # and the task's own calls.
        self.store = store or Store(connect(settings.redis_url, timeout=10.0, retries=2,
                                            max_connections=settings.concurrency * 2 + 16),
                                    settings.namespace, dedupe_ttl=settings.dedupe_ttl)
        self.client = client or DistinctClient(settings)
        self.policy = BackoffPolicy.from_settings(settings)
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        #: Set on SIGTERM (workers/app.py): hand back what is not yet sent.
        self.stopping = threading.Event()
        self._local = threading.local()
        self.claim_ttl = settings.connect_timeout + settings.read_timeout + 10.0
        self.gate = gate or Gate(
            self.store.client, settings.namespace,
            BreakerPolicy(
                consecutive=settings.breaker_consecutive,
                min_requests=settings.breaker_min_requests,
                ratio=settings.breaker_ratio,
                window=settings.breaker_window,
                cooldown_min=settings.breaker_cooldown_min,
                cooldown_max=settings.breaker_cooldown_max,
            ),
            rate_limit=settings.rate_limit,
            dedupe_ttl=settings.dedupe_ttl,
        )

    def park_after_error(self, events: list[Any]) -> dict[str, int]:
        """Put a message's events in the retry set after an unexpected error."""
        message = build_message(events, redelivered=True)
        now = self.clock()
        self._redis(lambda: self.store.finish_many(
            None, [Finish(f"message-{uuid.uuid4()}", "deferred", message,
                          now + ERROR_RETRY_DELAY)], now))
        return {"parked_after_error": len(events)}

    def _mine(self) -> tuple[Store, Gate]:
        """This thread's Store and Gate, on a connection of its own.

        Taken from the shared pool once per thread and kept: with 64 threads,
        borrowing and returning a pooled connection per command cost as much
        CPU as the command itself.
        """
        mine: tuple[Store, Gate] | None = getattr(self._local, "mine", None)
        if mine is None:
            client = redis.Redis(connection_pool=self.store.client.connection_pool,
                                 single_connection_client=True)
            gate = self.gate
            mine = (Store(client, self.settings.namespace, dedupe_ttl=self.store.dedupe_ttl),
                    Gate(client, self.settings.namespace, gate.policy,
                         rate_limit=gate.rate_limit or None, dedupe_ttl=gate.dedupe_ttl))
            self._local.mine = mine
        return mine

    # --- one task's events ------------------------------------------------------
    def take_more(self, own: int) -> tuple[str | None, list[Any]]:
        """Take queued messages to deliver along with a task's ``own`` events.

        Returns the taken batch (None if nothing was taken) and its events; a
        message that cannot be read is dead-lettered as malformed.
        """
        # A round is about one chunk of events, so a backlog spreads over all
        # threads instead of waiting behind one.
        room = CHUNK_EVENTS - own
        if room <= 0 or self.stopping.is_set():
            return None, []
        batch, messages = self._redis(lambda: self._mine()[0].take(TAKE_MESSAGES, room))
        if not messages:
            self._redis(lambda: self._mine()[0].release(batch))
            return None, []
        events: list[Any] = []
        for message in messages:
            try:
                events += events_in_message(message)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self._dead_letter_malformed(message[:DLQ_DETAIL_BYTES],
                                            f"unreadable message: {type(exc).__name__}: {exc}")
        return batch, events

    def deliver_task(self, events: list[Any]) -> dict[str, int]:
        """A task's events, then, while a backlog lasts, rounds of taken ones.

        Each round takes up to TAKE_MESSAGES messages; the task stops taking
        when the queue is empty, on shutdown, or when its budget is spent, so
        its own message is acknowledged long before the visibility timeout.
        """
        deadline = time.monotonic() + TASK_BUDGET_SECONDS
        counts: dict[str, int] = {}
        while True:
            taken, more = self.take_more(len(events))
            for name, n in self.deliver_batch(events + more, taken, deadline).items():
                counts[name] = counts.get(name, 0) + n
            if taken is None or "handed_back" in counts or \
                    time.monotonic() > deadline - TAKE_STOP_BEFORE_DEADLINE:
                return counts
            events = []

    def deliver_batch(self, events: list[Any], taken: str | None = None,
                      deadline: float | None = None) -> dict[str, int]:
        """Deliver events; returns counts by outcome.

        Events go in chunks: one Lua call admits a chunk, its POSTs go out in
        order, and each outcome is recorded (one Lua call, with the breaker's
        update) as soon as it is known. A chunk stops at its first failure,
        giving the rest back unsent, so the shared breaker sees each failure
        before this thread sends anything more. ``taken`` (a
        batch from :meth:`take_more`) is released at the end, together with
        anything handed back.
        """
        counts: dict[str, int] = {}
        if deadline is None:
            deadline = time.monotonic() + TASK_BUDGET_SECONDS
        pending: deque[Event] = deque()
        for raw in events:
            problem = malformed(raw)
            if problem:
                self._dead_letter_malformed(raw, problem)
                counts["dead_lettered"] = counts.get("dead_lettered", 0) + 1
            else:
                pending.append(raw)
        # With a rate limit each event waits for its own slot, as if alone.
        size = 1 if self.settings.rate_limit else CHUNK_EVENTS
        rate_rounds: dict[str, int] = {}
        while pending and time.monotonic() <= deadline and not self.stopping.is_set():
            chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
            unsent = self._deliver_chunk(chunk, counts, deadline, rate_rounds)
            pending.extendleft(reversed(unsent))
        rest = [build_message(list(pending)[i:i + MESSAGE_BATCH])
                for i in range(0, len(pending), MESSAGE_BATCH)]
        if taken is not None:
            self._redis(lambda: self._mine()[0].release(taken, rest))
        elif rest:
            self._redis(partial(self.store.enqueue, rest))
        if pending:
            log.info("task budget spent or shutting down; handed %d events back to the queue",
                     len(pending))
            counts["handed_back"] = len(pending)
        return counts

    def _deliver_chunk(self, chunk: list[Event], counts: dict[str, int], deadline: float,
                       rate_rounds: dict[str, int]) -> list[Event]:
        """Admit, send and record one chunk; returns the events to try again now."""
        token = uuid.uuid4().hex
        admissions = self._redis(lambda: self._mine()[1].admit_many(
            [e["id"] for e in chunk], token, self.claim_ttl))
        admitted_at = time.monotonic()
        now = self.clock()
        finishes: list[Finish] = []  # the parked ones
        again: list[Event] = []
        claimed: list[tuple[Event, Admission]] = []
        delivered: list[tuple[Event, Outcome]] = []
        rate_wait = 0.0
        for event, admission in zip(chunk, admissions, strict=True):
            if admission.state == "delivered":
                log.info("skipped id=%s: already delivered (dedupe window)", event["id"])
                counts["skipped"] = counts.get("skipped", 0) + 1
            elif admission.state == "claimed":
                claimed.append((event, admission))
            elif admission.state == "wait" and rate_rounds.get(event["id"], 0) + 1 < \
                    RATE_WAIT_ROUNDS:
                # No rate slot within the next second: wait a little, ask again.
                rate_rounds[event["id"]] = rate_rounds.get(event["id"], 0) + 1
                rate_wait = max(rate_wait, min(admission.wait, RATE_MAX_WAIT))
                again.append(event)
            else:
                # Busy elsewhere, breaker open, or no rate slot soon: the event
                # waits in the retry set, not in this process, and keeps its
                # attempt count because nothing was sent.
                due = admission.until if admission.state == "open" else now + (
                    BUSY_RETRY_DELAY if admission.state == "busy" else admission.wait)
                finishes.append(Finish(event["id"], "deferred",
                                       build_message([event], redelivered=True),
                                       due + self.rng.uniform(0, 1.0)))
                counts["deferred"] = counts.get("deferred", 0) + 1
                metrics.DEFERRED.inc()
        # Parked events first, in one call: none of them was sent.
        self._record(token, finishes, [])
        for index, (event, admission) in enumerate(claimed):
            if index and (self.stopping.is_set() or time.monotonic() > deadline):
                again += self._give_back(token, claimed[index:])
                break
            slot = admitted_at + admission.wait - time.monotonic()
            if slot > 0:
                self.sleep(slot)  # a reserved rate-limit slot, under 1 s
            try:
                outcome = self.client.send(event)
            except Exception as exc:  # a bug must not lose the event
                log.exception("unexpected error sending id=%s", event["id"])
                outcome = Outcome("transient", None, f"internal error: {type(exc).__name__}: {exc}")
            finish, report, name = self._outcome(event, outcome)
            counts[name] = counts.get(name, 0) + 1
            if name == "delivered":
                delivered.append((event, outcome))
            # Each outcome is stored as soon as it is known: a worker killed
            # now can leave at most this one POST to be sent twice.
            self._record(token, [finish], [report])
            if outcome.verdict not in ("delivered", "rejected"):
                again += self._give_back(token, claimed[index + 1:])
                break
        _log_delivered(delivered)
        if rate_wait and again:
            self.sleep(rate_wait * self.rng.uniform(0.5, 1.0))
        return again

    def _record(self, token: str, finishes: list[Finish],
                reports: list[Callable[[], None]]) -> None:
        """Store outcomes (one Lua call, with the breaker), then emit their metrics."""
        if not finishes:
            return
        breaker = (self.gate.breaker_keys, self.gate.breaker_policy_args())
        changes = self._redis(lambda: self._mine()[0].finish_many(token, finishes, self.clock(),
                                                              breaker))
        for report in reports:
            report()
        for change in changes:
            self._log_breaker(change)

    def _give_back(self, token: str, unsent: list[tuple[Event, Admission]]) -> list[Event]:
        """Release the claims of events admitted but not sent; returns the events."""
        self._record(token, [Finish(event["id"], "released") for event, _ in unsent], [])
        return [event for event, _ in unsent]

    def _outcome(self, event: Event, outcome: Outcome) -> tuple[Finish, Callable[[], None], str]:
        """What ``outcome`` means for ``event``: the Finish to store, the log line
        and metrics to emit once it is stored, and the outcome's name."""
        now = self.clock()
        tried = Event(**{**event, "attempts": int(event.get("attempts", 0)) + 1})
        decision = decide(tried, outcome, now, self.policy, self.rng)
        kind = tried["body"].get("type") or tried["kind"]
        labels = (tried["kind"], kind, str(outcome.status or "none"))
        signal, reason = _breaker_signal(outcome)
        metrics.HTTP_LATENCY.observe(outcome.elapsed)
        if isinstance(decision, Delivered):
            def delivered() -> None:
                # The log line is the chunk's (_log_delivered): one per event
                # would cost a sixth of a busy worker's CPU.
                metrics.DELIVERED.labels(*labels).inc()
                metrics.CAPTURE_TO_DELIVERY.observe(max(0.0, now - tried["first_seen"]))
            return (Finish(tried["id"], "delivered", dedupe_member(tried["id"]),
                           self.settings.dedupe_ttl, signal, reason), delivered, "delivered")
        if isinstance(decision, Retry):
            def retried() -> None:
                level = logging.ERROR if outcome.verdict == "deployment" else logging.WARNING
                log.log(level, "retry id=%s kind=%s status=%s attempts=%d in=%.1fs %s: %s",
                        tried["id"], kind, outcome.status, tried["attempts"], decision.delay,
                        _hint(outcome), mask_email(outcome.detail[:200]))
                metrics.RETRIED.labels(*labels).inc()
            message = build_message([tried], redelivered=True)
            return (Finish(tried["id"], "retried", message, decision.due, signal, reason),
                    retried, "retried")
        assert isinstance(decision, DeadLetter)

        def dead() -> None:
            log.warning("dead-lettered id=%s kind=%s reason=%s status=%s attempts=%d: %s",
                        tried["id"], kind, decision.reason, outcome.status, tried["attempts"],
                        mask_email(outcome.detail[:200]))
            metrics.DEAD_LETTERED.labels(*labels).inc()
        entry = dead_letter_entry(tried, outcome, decision.reason, now)
        return dead_letter_finish(entry, now, signal, reason), dead, "dead_lettered"

    def _log_breaker(self, change: str) -> None:
        if change == "opened":
            state = self.gate.state()
            log.error("circuit breaker OPEN (reason %s) for %.0f s: %s", state.reason,
                      state.cooldown, state.hint)
        elif change == "reopened":
            state = self.gate.state()
            log.error("circuit breaker probe failed; open for another %.0f s", state.cooldown)
        elif change == "closed":
            log.warning("circuit breaker closed: Distinct answers again; releasing the backlog")

    # --- helpers -------------------------------------------------------------
    def _dead_letter_malformed(self, raw: Any, problem: str) -> None:
        now = self.clock()
        event_id = raw.get("id") if isinstance(raw, dict) else None
        entry = {
            "id": str(event_id) if isinstance(event_id, str) and event_id else
            f"malformed-{uuid.uuid4()}",
            "kind": raw.get("kind") if isinstance(raw, dict) else None,
            "experience": raw.get("experience") if isinstance(raw, dict) else None,
            "body": raw.get("body") if isinstance(raw, dict) else raw,
            "attempts": 0, "first_seen": now, "last_attempt": None, "last_status": None,
            "last_error": problem, "reason": "malformed", "dead_at": now,
        }
        self._redis(lambda: self.store.dead_letter(entry, None, now))
        log.error("dead-lettered a malformed message: %s", problem)

    def _redis(self, operation: Callable[[], T]) -> T:
        """Run a Redis operation, riding out a short Redis outage."""
        deadline = time.monotonic() + REDIS_PATIENCE_SECONDS
        delay = 0.1
        while True:
            try:
                return operation()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                if time.monotonic() + delay > deadline:
                    log.error("Redis unreachable for %.0f s; returning the message to the queue",
                              REDIS_PATIENCE_SECONDS)
                    raise Reject(f"redis unreachable: {type(exc).__name__}", requeue=True) from None
                self.sleep(delay)
                delay = min(delay * 2, 2.0)


def _log_delivered(delivered: list[tuple[Event, Outcome]]) -> None:
    """One line for the events of a chunk that Distinct took, naming each id."""
    if not delivered:
        return
    if len(delivered) == 1:
        event, outcome = delivered[0]
        log.info("delivered id=%s kind=%s status=%s attempts=%d ms=%.0f", event["id"],
                 event["body"].get("type") or event["kind"], outcome.status,
                 int(event.get("attempts", 0)) + 1, outcome.elapsed * 1000)
        return
    ids = [event["id"] for event, _ in delivered]
    slowest = max(outcome.elapsed for _, outcome in delivered) * 1000
    log.info("delivered %d events (slowest %.0f ms): id=%s", len(ids), slowest, ",".join(ids),
             extra={"fields": {"ids": ids}})


def _breaker_signal(outcome: Outcome) -> tuple[Signal, str]:
    """What an outcome tells the circuit breaker about Distinct's health."""
    if outcome.verdict in ("delivered", "rejected"):
        return "ok", ""
    if outcome.verdict == "deployment":
        return "auth", "auth" if outcome.status in (401, 403) else "deployment"
    return "fail", "transient"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hint(outcome: Outcome) -> str:
    if outcome.status in (401, 403):
        return "Distinct refused the API key (check DISTINCT_API_KEY)"
    if outcome.verdict == "deployment":
        return "deployment problem (check DISTINCT_API_URL and TLS)"
    return "transient"


def malformed(raw: Any) -> str | None:
    """Why ``raw`` is not a deliverable event, or None if it is one."""
    if not isinstance(raw, dict):
        return f"event is a {type(raw).__name__}, not an object"
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        return "event has no id"
    if raw.get("kind") not in KINDS:
        return f"unknown kind {raw.get('kind')!r}"
    if not isinstance(raw.get("body"), dict):
        return "event has no body object"
    if raw["kind"] == "capture" and not (
        isinstance(raw.get("experience"), str) and is_valid_slug(raw["experience"])
    ):
        return "capture event without a valid experience slug"
    if not isinstance(raw.get("first_seen"), (int, float)):
        return "event has no first_seen time"
    return None


def dead_letter_entry(event: Event, outcome: Outcome, reason: str, now: float) -> dict[str, Any]:
    """A DLQ entry: everything needed to judge and replay, never the API key."""
    return {
        "id": event["id"],
        "kind": event["kind"],
        "experience": event.get("experience"),
        "body": event["body"],
        "attempts": event["attempts"],
        "first_seen": event["first_seen"],
        "last_attempt": now,
        "last_status": outcome.status,
        "last_error": outcome.detail[:DLQ_DETAIL_BYTES],
        "reason": reason,
        "dead_at": now,
    }


def register(app: Celery) -> Any:
    """Register ``distinct.deliver`` on ``app``."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True, typing=False)
    def deliver(self: Any, events: list[Any]) -> dict[str, int]:
        deliverer: Deliverer = self.app.forwarder_deliverer()
        if not isinstance(events, list):
            events = [events]
        try:
            # A backlog of single events: take more of it along (forwarder/fetching.py).
            return deliverer.deliver_task(events)
        except Reject:
            raise
        except Exception:
            # A bug must not lose the message: Celery would acknowledge a
            # failed task. Its events wait in the retry set instead (dedupe
            # skips any already delivered); a batch it had taken comes back
            # at its deadline.
            log.exception("unexpected error delivering a message of %d events; they wait "
                          "in the retry set for %.0f s", len(events), ERROR_RETRY_DELAY)
            return deliverer.park_after_error(events)

    return deliver
