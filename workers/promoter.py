"""Moves due retries from the retry set back to the queue.

Every worker process runs one of these threads. The move is one Lua script
(``promote.lua``), so with any number of workers each due retry is requeued
exactly once. Backoff therefore never lives in worker memory or in Celery
ETA messages, which kombu's Redis transport redelivers in a loop once their
delay passes the visibility timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from forwarder import constants as C
from forwarder.constants import (
    PROMOTE_BATCH,
    PROMOTE_INTERVAL_SECONDS,
    RAMP_START,
    RAMP_STEP_SECONDS,
)
from forwarder.messages import MalformedEvent, parse_event
from forwarder.scripts import script
from forwarder.store import Store
from workers import metrics

_PROMOTE = script("promote", "workers")

log = logging.getLogger("distinct_forwarder.promoter")
#: How often the queue/retry/DLQ/breaker gauges are refreshed.
GAUGE_INTERVAL_SECONDS = 5.0
#: How often DLQ retention runs.
RETENTION_INTERVAL_SECONDS = 60.0


def age_since_capture(raw: str | None, now: float) -> float:
    """Seconds since a queued event was captured (0 for none, or one unreadable)."""
    if raw is None:
        return 0.0
    try:
        return max(0.0, now - parse_event(raw)["first_seen"])
    except MalformedEvent:
        return 0.0


class RetryPromoter:
    """A daemon thread calling ``store.promote_due`` every interval.

    Every few seconds it also refreshes the depth gauges, and every minute it
    applies the DLQ retention (``FORWARDER_DLQ_TTL``), logging what it removed.
    """

    def __init__(
        self,
        store: Store,
        interval: float = PROMOTE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
        dlq_ttl: float | None = None,
    ):
        self.store = store
        self.interval = interval
        self.clock = clock
        self.dlq_ttl = dlq_ttl
        k = lambda name: C.key(store.namespace, name)  # noqa: E731
        self._keys = {"retry": store.retry_key, "queue": store.queue_key,
                      "breaker": k(C.BREAKER), "probe": k(C.BREAKER_PROBE),
                      "released": k(C.BREAKER_RELEASED)}
        self._next_gauges = 0.0
        self._next_retention = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.moved = 0

    def promote_due(self, limit: int = PROMOTE_BATCH) -> int:
        """Requeue retries due now (Redis clock), as the breaker allows; returns how many."""
        return int(_PROMOTE(self.store.client, **self._keys, limit=limit,
                            ramp_start=RAMP_START, ramp_step=RAMP_STEP_SECONDS))

    def run_once(self) -> int:
        moved = 0
        while True:
            n = self.promote_due()
            moved += n
            if n < PROMOTE_BATCH:
                return moved

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.moved += self.run_once()
                self._housekeeping()
                if failing:
                    log.warning("retry promoter: Redis is back")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("retry promoter: Redis unavailable (%s); will keep trying",
                                type(exc).__name__)
                failing = True
            except Exception:
                log.exception("retry promoter: unexpected error")
            self._stop.wait(self.interval)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_gauges:
            self._next_gauges = now + GAUGE_INTERVAL_SECONDS
            metrics.QUEUE_DEPTH.set(self.store.queue_depth())
            metrics.RETRY_DEPTH.set(self.store.retry_depth())
            seconds, micros = self.store.client.time()  # the retry set's clock
            metrics.RETRY_DUE.set(self.store.retry_due(seconds + micros / 1e6))
            metrics.QUEUE_OLDEST_AGE.set(age_since_capture(self.store.oldest_queued(),
                                                           self.clock()))
            metrics.DLQ_DEPTH.set(self.store.dlq_depth())
            metrics.BREAKER_OPEN.set(1 if self.store.breaker().state == "open" else 0)
        if self.dlq_ttl and now >= self._next_retention:
            self._next_retention = now + RETENTION_INTERVAL_SECONDS
            removed = self.store.dlq_expire(self.clock(), self.dlq_ttl)
            if removed:
                log.warning("DLQ retention: removed %d entries older than %.0f days",
                            removed, self.dlq_ttl / 86400)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="retry-promoter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
