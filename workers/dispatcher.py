"""Feeds one worker process's Celery pool with batches it holds.

A thread per worker process takes events off the queue into a batch held by
this worker (workers/holding.py), then sends a ``distinct.deliver`` task
naming that batch to this process's own Celery queue (``dispatch.{worker}``),
where its pool runs it like any Celery task (Flower shows it). The Celery
message is only a pointer: the events stay held in Redis by this worker
until each outcome is stored, so a message lost with a broker connection, or
a process killed between fetch and acknowledgement, loses nothing. A batch
whose message has not started within ``DISPATCH_RESEND_SECONDS`` gets another
message; the second one to arrive finds the batch begun and does nothing.

The thread keeps at most ``capacity`` batches dispatched (the pool's threads
plus a few ready to start), and takes no more than its share of the queue
for the slots it has free, so a short backlog spreads over idle threads; but
no less than one thread sends in SPREAD_SECONDS at the recent POST time, as
each batch costs Redis about six round trips.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable

import redis

from forwarder.constants import (
    BATCH_EVENTS,
    DISPATCH_RESEND_SECONDS,
    IDLE_WAIT_SECONDS,
    SPREAD_SECONDS,
)
from forwarder.messages import describe
from workers.holding import Holding
from workers.upgrade import expand

log = logging.getLogger("distinct_forwarder.dispatcher")
#: Publishes one task message: (batch, count, argsrepr).
Publish = Callable[[str, int, str], None]
#: After a Redis error, wait this long before taking again.
ERROR_PAUSE_SECONDS = 1.0

_ID = re.compile(rb'"id":"([0-9a-f-]{36})"')
_TYPE = re.compile(rb'"(?:kind|type)":"([A-Za-z_]{1,40})"')


class Dispatcher:
    """Takes batches for this worker and dispatches one task per batch."""

    def __init__(self, holding: Holding, publish: Publish, capacity: int,
                 clock: Callable[[], float] = time.monotonic,
                 post_seconds: Callable[[], float | None] = lambda: None):
        self.holding = holding
        self.publish = publish
        self.capacity = max(1, capacity)
        self.clock = clock
        #: How long a POST takes lately (workers/delivery.py: PostTime).
        self.post_seconds = post_seconds
        self._lock = threading.Condition()
        #: Dispatched, not begun: batch -> (events, when its last message went out).
        self._waiting: dict[str, tuple[int, float]] = {}
        #: Begun, not ended: batch -> events.
        self._running: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def dispatched(self, batch: str, count: int) -> None:
        """``batch`` (``count`` events, held by this worker) has a task on its way."""
        with self._lock:
            self._waiting[batch] = (count, self.clock())

    # --- called by the task ---------------------------------------------------------
    def begin(self, batch: str) -> bool:
        """A task starts on ``batch``; False if it must not (begun already, or not ours)."""
        with self._lock:
            waiting = self._waiting.pop(batch, None)
            if waiting is None:
                return False
            self._running[batch] = waiting[0]
            return True

    def end(self, batch: str, finished: bool) -> None:
        """A task is done with ``batch``; unfinished (Redis was away): dispatch it again."""
        with self._lock:
            count = self._running.pop(batch, 0)
            if not finished and count and not self._stop.is_set():
                # Its events are still held: a new message after the usual wait.
                self._waiting[batch] = (count, self.clock())
            self._lock.notify_all()

    # --- the thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = IDLE_WAIT_SECONDS + 2) -> None:
        """Stop taking; what is held stays held (the worker requeues it as it exits)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def busy(self) -> int:
        """Batches dispatched and not yet done."""
        with self._lock:
            return len(self._waiting) + len(self._running)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self._resend_stale()
                self.run_once()
                if failing:
                    log.warning("dispatcher: Redis is back")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("dispatcher: Redis unavailable (%s); will keep trying",
                                type(exc).__name__)
                failing = True
                self._stop.wait(ERROR_PAUSE_SECONDS)
            except Exception:
                log.exception("dispatcher: unexpected error")
                self._stop.wait(ERROR_PAUSE_SECONDS)

    def run_once(self) -> int:
        """Take and dispatch one batch if there is room and work; returns its size."""
        with self._lock:
            free = self.capacity - len(self._waiting) - len(self._running)
            if free <= 0:
                self._lock.wait(IDLE_WAIT_SECONDS)
                return 0
        batch = secrets.token_hex(8)
        taken = self.holding.take(batch, BATCH_EVENTS, free, self.least_batch())
        if not taken.items:
            # Nothing queued: block until something is (it lands in this
            # worker's landing list, and the next take holds it).
            self.holding.wait_for_work(IDLE_WAIT_SECONDS)
            return 0
        items = expand(self.holding.client, self.holding.held_key, batch, taken.items)
        count = len(items)
        if not count:
            return 0
        self.dispatched(batch, count)
        self._send(batch, count, items)
        return count

    def least_batch(self) -> int:
        """The smallest batch worth its Redis round trips: what one thread sends in
        SPREAD_SECONDS at the recent POST time (1 until a POST was timed)."""
        seconds = self.post_seconds()
        if not seconds or seconds <= 0:
            return 1
        return max(1, min(BATCH_EVENTS, int(SPREAD_SECONDS / seconds)))

    def _send(self, batch: str, count: int, items: list[bytes] | None = None) -> None:
        labels = [_label(i) for i in (items or [])[:3]]
        try:
            self.publish(batch, count, describe(labels, count) if labels
                         else f"[{count} events, batch {batch}]")
        except Exception as exc:  # the broker's error types vary by transport
            # Still held, still waiting: _resend_stale sends it again later.
            log.warning("dispatcher: could not send the task for batch %s (%s); "
                        "it stays held and is sent again", batch, type(exc).__name__)
            with self._lock:
                if batch in self._waiting:
                    self._waiting[batch] = (count, self.clock() - DISPATCH_RESEND_SECONDS
                                            + ERROR_PAUSE_SECONDS * 5)

    def _resend_stale(self) -> None:
        now = self.clock()
        with self._lock:
            stale = [(b, n) for b, (n, sent) in self._waiting.items()
                     if now - sent >= DISPATCH_RESEND_SECONDS]
            for batch, count in stale:
                self._waiting[batch] = (count, now)
        for batch, count in stale:
            log.warning("batch %s was not started within %.0f s; sending its task again",
                        batch, DISPATCH_RESEND_SECONDS)
            self._send(batch, count)


def _label(item: bytes) -> str:
    """``id:TYPE`` of a queue event, for Flower: never an email or a body value."""
    head = item[:300]
    found = _ID.search(head)
    # The last of kind/type near the start: the capture type, else the kind.
    types = _TYPE.findall(head)
    return (f"{found.group(1).decode() if found else '?'}:"
            f"{types[-1].decode() if types else '?'}")
