"""The producer's enqueue: one LPUSH, with the local spool behind it.

When the LPUSH fails (or Redis failed a moment ago and is in its short
back-off) the events go to the spool (forwarder/spool.py) and ``capture()``
still returns. Once Redis answers again, every ``capture()`` call moves a
bounded amount of the spool back to the queue; ``spool flush`` moves it all.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import redis

from forwarder.errors import EnqueueError, SpoolFull
from forwarder.spool import Spool, drain
from forwarder.store import Store, redis_error_text

log = logging.getLogger("distinct_forwarder.spool")

#: Work one capture() call may do for the spool once Redis is back.
DRAIN_MESSAGES_PER_CALL = 200
DRAIN_SECONDS_PER_CALL = 0.05
#: While Redis is healthy, look for rows (other processes' too) this often.
CHECK_INTERVAL = 1.0
#: After a failure, go straight to the spool for this long, doubling up to the cap.
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 5.0


class SpoolingEnqueuer:
    """The producer's LPUSH with the spool behind it, and the back-off state.

    :meth:`push` is the blocking producer's whole enqueue. The asyncio
    producer (forwarder/async_producer.py) runs the same steps, awaiting its
    own LPUSH and running :meth:`to_spool` and :meth:`drain_some` in a thread:
    :meth:`redis_allowed`, then :meth:`redis_failed` or :meth:`redis_answered`.
    """

    def __init__(self, store: Store, spool: Spool | None, redis_url: str):
        self.store = store
        self.spool = spool
        self.redis_url = redis_url
        self._skip_until = 0.0
        self._backoff = 0.0
        self._last_error = ""
        self._next_check = 0.0
        self._drain_lock = threading.Lock()
        #: In-process counters (``spool status`` shows the host-wide full count).
        self.stats = {"spooled": 0, "drained": 0, "spool_full": 0}

    def push(self, items: list[str]) -> None:
        now = time.monotonic()
        if self.redis_allowed(now):
            try:
                self.store.enqueue(items)
            except redis.RedisError as exc:
                self.redis_failed(now, exc)
            else:
                if self.redis_answered(now):
                    self.drain_some()
                return
        self.to_spool(items)

    # --- the steps, shared with the asyncio producer -------------------------------
    def redis_allowed(self, now: float) -> bool:
        """Whether to try the LPUSH; False in the short back-off after a failure."""
        return self.spool is None or now >= self._skip_until

    def redis_failed(self, now: float, exc: Exception) -> None:
        """The LPUSH failed: back off (the caller then spools the events), or raise
        EnqueueError when there is no spool."""
        if self.spool is None:
            raise EnqueueError(redis_error_text(exc, self.redis_url)) from None
        self._failed(now, exc)

    def redis_answered(self, now: float) -> bool:
        """The LPUSH worked; True when the caller should now call :meth:`drain_some`."""
        if self.spool is None:
            return False
        if self._backoff:
            log.warning("Redis answers again; draining the spool %s", self.spool.path)
            self._backoff = 0.0
            self._next_check = 0.0
        if now < self._next_check:
            return False
        # Concurrent callers (an event loop's tasks) leave the look to this one;
        # drain_some sets the next look when it is done.
        self._next_check = now + CHECK_INTERVAL
        return True

    def _failed(self, now: float, exc: Exception) -> None:
        first = self._backoff == 0.0
        self._backoff = BACKOFF_FIRST if first else min(self._backoff * 2, BACKOFF_CAP)
        self._skip_until = now + self._backoff
        self._last_error = redis_error_text(exc, self.redis_url)
        if first:
            log.warning("%s; spooling captures to %s", self._last_error,
                        self.spool.path if self.spool else "-")

    def to_spool(self, items: list[str]) -> None:
        """Store the events in the spool (fsynced), or raise SpoolFull / EnqueueError."""
        assert self.spool is not None
        try:
            self.spool.put(items, self.store.namespace)
        except SpoolFull:
            self.stats["spool_full"] += 1
            raise
        except (sqlite3.Error, OSError) as exc:
            raise EnqueueError(f"{self._last_error}; and the spool {self.spool.path} failed: "
                               f"{type(exc).__name__}: {exc}") from None
        self.stats["spooled"] += len(items)
        # Look at the spool soon after Redis is back, not a full interval later.
        self._next_check = 0.0

    def drain_some(self) -> None:
        """Bounded drain on a capture() call (blocking: the asyncio producer runs
        it in a thread); never raises."""
        assert self.spool is not None
        if not self._drain_lock.acquire(blocking=False):
            return  # another thread of this process is on it
        try:
            if not self.spool.has_rows(self.store.namespace):
                self._next_check = time.monotonic() + CHECK_INTERVAL
                return
            result = drain(self.spool, self.store, max_messages=DRAIN_MESSAGES_PER_CALL,
                           budget=DRAIN_SECONDS_PER_CALL)
            self.stats["drained"] += result.messages
            # Rows left: drain again on the next call; else look again later.
            self._next_check = 0.0 if result.more else time.monotonic() + CHECK_INTERVAL
        except redis.RedisError as exc:
            self._failed(time.monotonic(), exc)
        except (sqlite3.Error, OSError) as exc:
            log.error("spool %s could not be drained: %s", self.spool.path, exc)
            self._next_check = time.monotonic() + CHECK_INTERVAL
        finally:
            self._drain_lock.release()
