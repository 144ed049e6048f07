"""Moves due retries from the retry set back to the queue.

Every worker process runs one of these threads. The move is one Lua script
(``Store.promote_due``), so with any number of workers each due retry goes
back to the queue exactly once. Backoff therefore never lives in worker
memory or in Celery ETA messages, which kombu's Redis transport redelivers
in a loop once their delay passes the visibility timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps

from forwarder.constants import (
    FETCH_GRACE_SECONDS,
    FETCH_SWEEP_INTERVAL_SECONDS,
    FETCHER_EXPIRY_SECONDS,
    PROMOTE_BATCH,
    PROMOTE_INTERVAL_SECONDS,
    VISIBILITY_TIMEOUT_SECONDS,
)
from forwarder.gate import Gate
from forwarder.store import Store
from workers import metrics

log = logging.getLogger("distinct_forwarder.promoter")
#: How often the queue/retry/DLQ/breaker gauges are refreshed.
GAUGE_INTERVAL_SECONDS = 5.0
#: How often DLQ retention runs.
RETENTION_INTERVAL_SECONDS = 60.0


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
        gate: Gate | None = None,
        fetch_grace: float = FETCH_GRACE_SECONDS,
    ):
        self.store = store
        self.interval = interval
        self.clock = clock
        self.dlq_ttl = dlq_ttl
        self.gate = gate
        self._next_gauges = 0.0
        self._next_sweep = 0.0
        self.fetch_grace = fetch_grace
        #: Messages seen in fetch lists, and when this sweeper first saw each.
        self._stranded: dict[tuple[str, str], float] = {}
        self._next_retention = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.moved = 0

    def run_once(self) -> int:
        moved = 0
        while True:
            n = self.store.promote_due(self.clock(), PROMOTE_BATCH)
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
            metrics.DLQ_DEPTH.set(self.store.dlq_depth())
            if self.gate is not None:
                metrics.BREAKER_OPEN.set(1 if self.gate.state().state == "open" else 0)
        if now >= self._next_sweep:
            self._next_sweep = now + FETCH_SWEEP_INTERVAL_SECONDS
            self._sweep_fetch_lists(now)
            restored = self.store.restore_taken()
            if restored:
                log.warning("queued %d messages again: a worker took them over %.0f s ago "
                            "and never finished (killed?)", restored, VISIBILITY_TIMEOUT_SECONDS)
        if self.dlq_ttl and now >= self._next_retention:
            self._next_retention = now + RETENTION_INTERVAL_SECONDS
            removed = self.store.dlq_expire(self.clock(), self.dlq_ttl)
            if removed:
                log.warning("DLQ retention: removed %d entries older than %.0f days",
                            removed, self.dlq_ttl / 86400)

    def _sweep_fetch_lists(self, now: float) -> None:
        """Queue again messages stranded between a fetch and kombu's unacked record."""
        seen: dict[tuple[str, str], float] = {}
        for fetch_list, last_seen in self.store.fetchers():
            messages = self.store.fetching(fetch_list)
            if not messages and last_seen < self.clock() - FETCHER_EXPIRY_SECONDS:
                self.store.forget_fetcher(fetch_list, last_seen)
            for message in messages:
                seen[(fetch_list, message)] = self._stranded.get((fetch_list, message), now)
        self._stranded = seen
        by_list: dict[str, list[str]] = {}
        for (fetch_list, message), first in seen.items():
            if now - first >= self.fetch_grace:
                by_list.setdefault(fetch_list, []).append(message)
        for fetch_list, messages in by_list.items():
            requeued = self.store.rescue(fetch_list, messages)
            for message in messages:
                self._stranded.pop((fetch_list, message), None)
            if requeued:
                log.warning("queued %d messages again: fetched over %.0f s ago by a worker "
                            "that never recorded them (killed mid-fetch?)", requeued,
                            self.fetch_grace)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="retry-promoter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class RetryPromoterStep(bootsteps.StartStopStep):
    """Celery worker bootstep running a RetryPromoter next to the pool."""

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.promoter: RetryPromoter | None = None

    def start(self, worker: Any) -> None:
        deliverer = worker.app.forwarder_deliverer()
        settings = deliverer.settings
        metrics.serve(settings.metrics_port)
        self.promoter = RetryPromoter(deliverer.store, dlq_ttl=settings.dlq_ttl,
                                      gate=deliverer.gate, fetch_grace=settings.fetch_grace)
        self.promoter.start()

    def stop(self, worker: Any) -> None:
        if self.promoter is not None:
            self.promoter.stop()

    shutdown = stop
