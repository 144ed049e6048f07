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
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import redis
from celery import Celery
from celery.exceptions import Reject

from forwarder.config import Settings, is_valid_slug
from forwarder.constants import (
    BUSY_RETRY_DELAY,
    DLQ_DETAIL_BYTES,
    RATE_MAX_WAIT,
    TASK_BUDGET_SECONDS,
    TASK_NAME,
)
from forwarder.gate import Admission, BreakerPolicy, Gate, Signal
from forwarder.logs import mask_email
from forwarder.messages import KINDS, Event, build_message
from forwarder.store import Store, connect
from workers import metrics
from workers.delivery import DistinctClient, Outcome
from workers.retry import BackoffPolicy, DeadLetter, Delivered, Retry, decide

log = logging.getLogger("distinct_forwarder.delivery")
T = TypeVar("T")

#: How long a worker keeps trying Redis inside one task before handing the
#: whole message back: long enough to ride out a Redis restart.
REDIS_PATIENCE_SECONDS = 30.0
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
        self.store = store or Store(connect(settings.redis_url, timeout=10.0, retries=2),
                                    settings.namespace, dedupe_ttl=settings.dedupe_ttl)
        self.client = client or DistinctClient(settings, pool_size=max(4, settings.concurrency))
        self.policy = BackoffPolicy.from_settings(settings)
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        #: Set on SIGTERM (workers/app.py): hand back what is not yet sent.
        self.stopping = threading.Event()
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

    # --- one message -----------------------------------------------------------
    def deliver_batch(self, events: list[Any]) -> dict[str, int]:
        """Deliver every event of one message; returns counts by outcome."""
        counts: dict[str, int] = {}
        deadline = time.monotonic() + TASK_BUDGET_SECONDS
        for index, event in enumerate(events):
            if time.monotonic() > deadline or self.stopping.is_set():
                rest = events[index:]
                self._redis(partial(self.store.enqueue, [build_message(rest)]))
                log.info("task budget spent; handed %d events back to the queue", len(rest))
                counts["handed_back"] = len(rest)
                break
            outcome = self.deliver_one(event)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def deliver_one(self, raw: Any) -> str:
        problem = malformed(raw)
        if problem:
            self._dead_letter_malformed(raw, problem)
            return "dead_lettered"
        event: Event = raw
        token = uuid.uuid4().hex
        admission = self._admit(event, token)
        if admission.state == "delivered":
            log.info("skipped id=%s: already delivered (dedupe window)", event["id"])
            return "skipped"
        if admission.state != "claimed":
            # Busy elsewhere, breaker open, or no rate slot soon: the event
            # waits in the retry set, not in this process, and keeps its
            # attempt count because nothing was sent.
            due = admission.until if admission.state == "open" else self.clock() + (
                BUSY_RETRY_DELAY if admission.state == "busy" else admission.wait)
            self._park(event, due + self.rng.uniform(0, 1.0))
            return "deferred"
        if admission.wait > 0:
            self.sleep(admission.wait)  # a reserved rate-limit slot, under 1 s
        try:
            outcome = self.client.send(event)
        except Exception as exc:  # a bug must not lose the event
            log.exception("unexpected error sending id=%s", event["id"])
            outcome = Outcome("transient", None, f"internal error: {type(exc).__name__}: {exc}")
        return self.record(event, token, outcome)

    def _admit(self, event: Event, token: str) -> Admission:
        for _ in range(RATE_WAIT_ROUNDS):
            admission = self._redis(lambda: self.gate.admit(event["id"], token, self.claim_ttl))
            if admission.state != "wait":
                return admission
            self.sleep(min(admission.wait, RATE_MAX_WAIT) * self.rng.uniform(0.5, 1.0))
        return admission

    def _park(self, event: Event, due: float) -> None:
        now = self.clock()
        message = build_message([event], redelivered=True)
        self._redis(lambda: self.store.schedule_retry(
            event["id"], None, message, due, now, outcome="deferred"))
        metrics.DEFERRED.inc()

    def record(self, event: Event, token: str | None, outcome: Outcome) -> str:
        """Store what ``outcome`` means for ``event``; returns the outcome name."""
        now = self.clock()
        tried = Event(**{**event, "attempts": int(event.get("attempts", 0)) + 1})
        decision = decide(tried, outcome, now, self.policy, self.rng)
        kind = tried["body"].get("type") or tried["kind"]
        labels = (tried["kind"], kind, str(outcome.status or "none"))
        signal, reason = _breaker_signal(outcome)
        breaker = (self.gate.breaker_keys, self.gate.breaker_args(signal, token, reason))

        metrics.HTTP_LATENCY.observe(outcome.elapsed)
        if isinstance(decision, Delivered):
            change = self._redis(lambda: self.store.mark_delivered(
                tried["id"], token, self.settings.dedupe_ttl, now, breaker=breaker))
            log.info("delivered id=%s kind=%s status=%s attempts=%d ms=%.0f",
                     tried["id"], kind, outcome.status, tried["attempts"],
                     outcome.elapsed * 1000)
            metrics.DELIVERED.labels(*labels).inc()
            metrics.CAPTURE_TO_DELIVERY.observe(max(0.0, now - tried["first_seen"]))
            self._log_breaker(change)
            return "delivered"
        if isinstance(decision, Retry):
            message = build_message([tried], redelivered=True)
            change = self._redis(lambda: self.store.schedule_retry(
                tried["id"], token, message, decision.due, now, breaker=breaker))
            level = logging.ERROR if outcome.verdict == "deployment" else logging.WARNING
            log.log(level, "retry id=%s kind=%s status=%s attempts=%d in=%.1fs %s: %s",
                    tried["id"], kind, outcome.status, tried["attempts"], decision.delay,
                    _hint(outcome), mask_email(outcome.detail[:200]))
            metrics.RETRIED.labels(*labels).inc()
            self._log_breaker(change)
            return "retried"
        assert isinstance(decision, DeadLetter)
        entry = dead_letter_entry(tried, outcome, decision.reason, now)
        change = self._redis(lambda: self.store.dead_letter(entry, token, now, breaker=breaker))
        log.warning("dead-lettered id=%s kind=%s reason=%s status=%s attempts=%d: %s",
                    tried["id"], kind, decision.reason, outcome.status, tried["attempts"],
                    mask_email(outcome.detail[:200]))
        metrics.DEAD_LETTERED.labels(*labels).inc()
        self._log_breaker(change)
        return "dead_lettered"

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
        task_id = self.request.id
        if task_id:
            # From here on kombu's unacked record covers the message; the
            # ledger (forwarder/ledger.py) covered the moment before.
            deliverer._redis(lambda: deliverer.store.task_started(task_id))
        if not isinstance(events, list):
            events = [events]
        return deliverer.deliver_batch(events)

    return deliver
