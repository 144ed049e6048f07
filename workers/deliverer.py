"""Delivering one held batch: claimed, POSTed, each outcome stored before the next POST.

Every event of a batch ends up delivered, in the retry set or in the
dead-letter queue, or is handed back to the queue (out of time, shutting
down). Each event stays held by this worker (workers/holding.py) until then.
The Celery task around this is workers/tasks.py.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from forwarder.config import Settings
from forwarder.constants import (
    BUSY_RETRY_DELAY,
    CHUNK_EVENTS,
    RATE_MAX_WAIT,
    TASK_BUDGET_SECONDS,
)
from forwarder.errors import ForwarderError
from forwarder.masking import mask_email
from forwarder.messages import (
    Event,
    MalformedEvent,
    encode_event,
    parse_event,
    random_uuid,
)
from forwarder.store import Store, connect, dedupe_member
from workers import metrics
from workers.delivery import DistinctClient, Outcome, PostTime
from workers.gate import Admission, BreakerPolicy, Gate, Legacy
from workers.holding import Holding
from workers.outcomes import (
    Finish,
    GroupCommit,
    Outcomes,
    breaker_signal,
    dead_letter,
    dead_letter_entry,
    has_work,
    hint,
    log_delivered,
    readable_parts,
)
from workers.retry import BackoffPolicy, DeadLetter, Delivered, Retry, decide

log = logging.getLogger("distinct_forwarder.delivery")
T = TypeVar("T")

#: How long a worker keeps trying Redis inside one task before it leaves the
#: batch held (the dispatcher sends it again later): a Redis restart's length.
#: Not for the outcome of a POST already sent, which waits for Redis however
#: long it is away: giving up would send the event to Distinct again.
REDIS_PATIENCE_SECONDS = 30.0
#: How many times a thread waits for a rate-limit slot before parking the event.
RATE_WAIT_ROUNDS = 5
#: The most of a malformed queue item kept in its dead-letter entry.
MALFORMED_SHOWN = 1024


class RedisUnavailable(ForwarderError):
    """Redis did not answer for REDIS_PATIENCE_SECONDS; what is held stays held."""


@dataclass(frozen=True)
class HeldEvent:
    field: str
    event: Event


@dataclass
class _Mine:
    """A delivery thread's own Redis connection, and what it runs on it."""

    holding: Holding
    gate: Gate


class Deliverer:
    """Delivers one worker process's held batches; shared by its threads."""

    def __init__(self, settings: Settings, worker: str, *, client: redis.Redis | None = None,
                 distinct: DistinctClient | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.worker = worker
        # One connection per delivery thread (_mine), plus room for the
        # dispatcher, the heartbeat and the promoter.
        self.client = client or connect(settings.redis_url, timeout=10.0, retries=2,
                                        max_connections=settings.concurrency * 2 + 16)
        self.distinct = distinct or DistinctClient(settings)
        self.post_time = PostTime()  # read by this worker's dispatcher
        self.policy = BackoffPolicy.from_settings(settings)
        self.breaker_policy = BreakerPolicy(
            consecutive=settings.breaker_consecutive, min_requests=settings.breaker_min_requests,
            ratio=settings.breaker_ratio, window=settings.breaker_window,
            cooldown_min=settings.breaker_cooldown_min,
            cooldown_max=settings.breaker_cooldown_max)
        self.holding = Holding(self.client, settings.namespace, worker)
        self.legacy = Legacy()  # shared by every thread's Gate and the outcome writer
        # Every thread's outcomes go through one writer (a connection of its own).
        self._in_post = 0  # threads in a POST right now
        self._in_post_lock = threading.Lock()
        self.outcomes = GroupCommit(Outcomes(
            redis.Redis(connection_pool=self.client.connection_pool,
                        single_connection_client=True),
            settings.namespace, self.holding.held_key, self.breaker_policy,
            settings.dedupe_ttl, self.legacy), in_post=lambda: self._in_post)
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        #: Set on SIGTERM: each task finishes its POST and hands back the rest.
        self.stopping = threading.Event()
        self.claim_ttl = settings.connect_timeout + settings.read_timeout + 10.0
        self._local = threading.local()

    def _mine(self) -> _Mine:
        """This thread's Holding and Gate, on a connection of its own.

        Taken from the shared pool once per thread and kept: with 96 threads,
        borrowing and returning a pooled connection per command cost as much
        CPU as the command itself.
        """
        mine: _Mine | None = getattr(self._local, "mine", None)
        if mine is None:
            client = redis.Redis(connection_pool=self.client.connection_pool,
                                 single_connection_client=True)
            s = self.settings
            mine = _Mine(Holding(client, s.namespace, self.worker),
                         Gate(client, s.namespace, s.rate_limit, s.dedupe_ttl,
                              self.legacy))
            self._local.mine = mine
        return mine

    # --- one batch ---------------------------------------------------------------
    def deliver_batch(self, batch: str, count: int) -> dict[str, int]:
        """Deliver what is still held of ``batch``; returns counts by outcome."""
        loaded = self._redis(lambda: self._mine().holding.load(batch, count))
        held: list[HeldEvent] = []
        malformed: list[Finish] = []
        for field, raw in loaded:
            try:
                held.append(HeldEvent(field, parse_event(raw)))
            except MalformedEvent as exc:
                malformed.append(self._malformed(field, raw, str(exc)))
        self._record(None, malformed, [])
        counts = self.deliver(held)
        if malformed:
            counts["dead_lettered"] = counts.get("dead_lettered", 0) + len(malformed)
        return counts

    def deliver(self, held: list[HeldEvent], deadline: float | None = None) -> dict[str, int]:
        """Events in chunks: one admission call per chunk, its POSTs in order, each
        outcome stored as soon as it is known. A chunk stops at its first failure,
        leaving the rest unsent, so the shared breaker sees each failure before
        this thread sends again. What is left at the deadline (or on SIGTERM)
        is handed back to the queue."""
        counts: dict[str, int] = {}
        deadline = time.monotonic() + TASK_BUDGET_SECONDS if deadline is None else deadline
        pending: deque[HeldEvent] = deque(held)
        # With a rate limit each event waits for its own slot, as if alone.
        size = 1 if self.settings.rate_limit else CHUNK_EVENTS
        rate_rounds: dict[str, int] = {}
        while pending and time.monotonic() <= deadline and not self.stopping.is_set():
            chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
            again = self._deliver_chunk(chunk, counts, deadline, rate_rounds)
            pending.extendleft(reversed(again))
        if pending:
            fields = [h.field for h in pending]
            self._redis(lambda: self._mine().holding.requeue_held(fields))
            log.info("out of time or shutting down: handed %d events back to the queue",
                     len(fields))
            counts["handed_back"] = len(fields)
        return counts

    def _deliver_chunk(self, chunk: list[HeldEvent], counts: dict[str, int], deadline: float,
                       rate_rounds: dict[str, int]) -> list[HeldEvent]:
        """Admit, send and record one chunk; returns the events to try again now."""
        token = self.holding.claim_token()
        admissions = self._redis(lambda: self._mine().gate.admit_many(
            [h.event["id"] for h in chunk], token, self.claim_ttl))
        admitted_at = time.monotonic()
        parked: list[Finish] = []
        again: list[HeldEvent] = []
        claimed: list[tuple[HeldEvent, Admission]] = []
        delivered: list[tuple[Event, Outcome]] = []
        rate_wait = 0.0
        for held, admission in zip(chunk, admissions, strict=True):
            event_id = held.event["id"]
            if admission.state == "delivered":
                log.info("skipped id=%s: already delivered (dedupe window)", event_id)
                parked.append(Finish(held.field, event_id, "skipped"))
                _count(counts, "skipped")
            elif admission.state == "claimed":
                claimed.append((held, admission))
            elif admission.state == "wait" and rate_rounds.get(event_id, 0) + 1 < \
                    RATE_WAIT_ROUNDS:
                # No rate slot within the next second: wait a little, ask again.
                rate_rounds[event_id] = rate_rounds.get(event_id, 0) + 1
                rate_wait = max(rate_wait, min(admission.wait, RATE_MAX_WAIT))
                again.append(held)
            else:
                # Busy elsewhere, breaker open, or no rate slot soon: the event
                # waits in the retry set, not in this process, and keeps its
                # attempt count because nothing was sent.
                delay = BUSY_RETRY_DELAY if admission.state == "busy" else admission.wait
                parked.append(Finish(held.field, event_id, "deferred", encode_event(held.event),
                                     delay + self.rng.uniform(0, 1.0)))
                _count(counts, "deferred")
                metrics.DEFERRED.inc()
        # Skipped and parked events first, in one call: none of them was sent.
        self._record(token, parked, [])
        for index, (held, admission) in enumerate(claimed):
            if index and (self.stopping.is_set() or time.monotonic() > deadline):
                again += self._release(token, claimed[index:])
                break
            slot = admitted_at + admission.wait - time.monotonic()
            if slot > 0:
                self.sleep(slot)  # a reserved rate-limit slot, under 1 s
            with self._in_post_lock:
                self._in_post += 1
            try:
                outcome = self.distinct.send(held.event)
            except Exception as exc:  # a bug must not lose the event
                log.exception("unexpected error sending id=%s", held.event["id"])
                outcome = Outcome("transient", None, f"internal error: {type(exc).__name__}")
            finally:
                with self._in_post_lock:
                    self._in_post -= 1
            self.post_time.observe(outcome.elapsed)
            finish, report, name = self._outcome(held, outcome)
            _count(counts, name)
            if name == "delivered":
                delivered.append((held.event, outcome))
            # Each outcome is stored as soon as it is known: a worker killed
            # now can leave at most this one POST to be sent twice. The
            # chunk's claims go with its last outcome (or the release below).
            failed = outcome.verdict not in ("delivered", "rejected")
            self._record(token, [finish], [report],
                         last=index == len(claimed) - 1 and not failed, sent=True)
            if failed:
                again += self._release(token, claimed[index + 1:])
                break
        log_delivered(delivered)
        if rate_wait and again:
            self.sleep(rate_wait * self.rng.uniform(0.5, 1.0))
        return again

    def _record(self, token: str | None, finishes: list[Finish],
                reports: list[Callable[[], None]], last: bool = False,
                sent: bool = False) -> None:
        """Store outcomes (one Lua call, with the breaker), then emit their metrics;
        ``last``: they end the chunk of ``token``, whose claims go with them;
        ``sent``: Distinct has seen these, so Redis is waited for without end."""
        if not has_work(token, finishes, last):
            return
        changes = self._redis(lambda: self.outcomes.store(token, finishes, last),
                              None if sent else REDIS_PATIENCE_SECONDS)
        for report in reports:
            report()
        for change in changes:
            self._log_breaker(change)

    def _release(self, token: str, unsent: list[tuple[HeldEvent, Admission]]) -> list[HeldEvent]:
        """End the chunk: give up the claims of events admitted but not sent (they
        stay held) with the rest of its claims."""
        self._record(token, [Finish(h.field, h.event["id"], "released") for h, _ in unsent], [],
                     last=True)
        return [h for h, _ in unsent]

    def _outcome(self, held: HeldEvent, outcome: Outcome
                 ) -> tuple[Finish, Callable[[], None], str]:
        """What ``outcome`` means for the event: the Finish to store, the log line
        and metrics to emit once it is stored, and the outcome's name."""
        now = self.clock()
        tried = Event(**{**held.event, "attempts": held.event["attempts"] + 1})
        decision = decide(tried, outcome, now, self.policy, self.rng)
        kind = tried["body"].get("type") or tried["kind"]
        labels = (tried["kind"], kind, str(outcome.status or "none"))
        signal, reason = breaker_signal(outcome)
        metrics.HTTP_LATENCY.observe(outcome.elapsed)
        if isinstance(decision, Delivered):
            def delivered() -> None:
                # The log line is the chunk's (_log_delivered): one per event
                # would cost a sixth of a busy worker's CPU.
                metrics.DELIVERED.labels(*labels).inc()
                metrics.CAPTURE_TO_DELIVERY.observe(max(0.0, now - tried["first_seen"]))
            return (Finish(held.field, tried["id"], "delivered", dedupe_member(tried["id"]),
                           signal=signal, breaker_reason=reason), delivered, "delivered")
        if isinstance(decision, Retry):
            def retried() -> None:
                level = logging.ERROR if outcome.verdict == "deployment" else logging.WARNING
                log.log(level, "retry id=%s kind=%s status=%s attempts=%d in=%.1fs %s: %s",
                        tried["id"], kind, outcome.status, tried["attempts"], decision.delay,
                        hint(outcome), mask_email(outcome.detail[:200]))
                metrics.RETRIED.labels(*labels).inc()
            return (Finish(held.field, tried["id"], "retried", encode_event(tried),
                           decision.delay, "", signal, reason), retried, "retried")
        assert isinstance(decision, DeadLetter)

        def dead() -> None:
            log.warning("dead-lettered id=%s kind=%s reason=%s status=%s attempts=%d: %s",
                        tried["id"], kind, decision.reason, outcome.status, tried["attempts"],
                        mask_email(outcome.detail[:200]))
            metrics.DEAD_LETTERED.labels(*labels).inc()
        entry = dead_letter_entry(tried, outcome, decision.reason, now)
        return dead_letter(held.field, entry, signal, reason), dead, "dead_lettered"

    def _malformed(self, field: str, raw: bytes, problem: str) -> Finish:
        """A queue item that is not a deliverable event: dead-lettered once, never sent.

        What can be read of it (id, kind, experience, body) is kept, so an
        operator can fix the entry (``dlq export``, edit, ``dlq import``) and
        replay it; the item itself, cut to 1 KiB, goes into ``last_error``.
        """
        now = self.clock()
        log.error("dead-lettered a malformed event (%s): %s", field, mask_email(problem))
        metrics.DEAD_LETTERED.labels("unknown", "malformed", "none").inc()
        entry = {"id": random_uuid(), "kind": None, "experience": None, "body": None,
                 "attempts": 0, "first_seen": now, "last_attempt": None, "last_status": None,
                 "last_error": f"malformed: {problem}; the item: "
                               + raw[:MALFORMED_SHOWN].decode("utf-8", "replace"),
                 "reason": "malformed", "dead_at": now}
        entry.update(readable_parts(raw))
        return dead_letter(field, entry)

    def after_error(self, batch: str, count: int, error: BaseException) -> dict[str, int]:
        """A bug stopped a task: what it still holds counts as a failed attempt.

        Each event goes through the retry rules like any transient failure
        (backoff, then ``exhausted`` after the maximum attempts), so an event
        that keeps triggering the bug ends in the DLQ instead of looping.
        """
        detail = f"internal error: {type(error).__name__}: {str(error)[:200]}"
        finishes = []
        for field, raw in self._redis(lambda: self._mine().holding.load(batch, count)):
            try:
                held = HeldEvent(field, parse_event(raw))
            except MalformedEvent as exc:
                finishes.append(self._malformed(field, raw, str(exc)))
                continue
            finishes.append(self._outcome(held, Outcome("transient", None, detail))[0])
        self._record(None, finishes, [])
        return {"after_error": len(finishes)}

    def _log_breaker(self, change: str) -> None:
        if change in ("opened", "reopened"):
            state = Store(self.client, self.settings.namespace).breaker()
            if change == "opened":
                log.error("circuit breaker OPEN (reason %s) for %.0f s: %s", state.reason,
                          state.cooldown, state.hint)
            else:
                log.error("circuit breaker probe failed; open for another %.0f s",
                          state.cooldown)
        elif change == "closed":
            log.warning("circuit breaker closed: Distinct answers again; releasing the backlog")

    def _redis(self, operation: Callable[[], T],
               patience: float | None = REDIS_PATIENCE_SECONDS) -> T:
        """Run a Redis operation, riding out a Redis outage of up to ``patience``
        seconds (None: however long; the batch is held by this live worker meanwhile)."""
        deadline = None if patience is None else time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                return operation()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise RedisUnavailable(
                        f"Redis unreachable for {REDIS_PATIENCE_SECONDS:.0f} s "
                        f"({type(exc).__name__})") from None
                self.sleep(delay)
                delay = min(delay * 2, 2.0)


def _count(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1
