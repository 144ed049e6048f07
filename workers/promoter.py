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

from forwarder.constants import PROMOTE_BATCH, PROMOTE_INTERVAL_SECONDS
from forwarder.store import Store

log = logging.getLogger("distinct_forwarder.promoter")


class RetryPromoter:
    """A daemon thread calling ``store.promote_due`` every interval."""

    def __init__(
        self,
        store: Store,
        interval: float = PROMOTE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.interval = interval
        self.clock = clock
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
        store = worker.app.forwarder_deliverer().store
        self.promoter = RetryPromoter(store)
        self.promoter.start()

    def stop(self, worker: Any) -> None:
        if self.promoter is not None:
            self.promoter.stop()

    shutdown = stop
