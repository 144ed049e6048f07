"""A worker's heartbeat, and the sweep that brings a dead worker's events back.

Every worker process beats (``beat.lua``, on Redis's clock) and looks for
workers silent for ``FORWARDER_WORKER_TIMEOUT`` (20 s) four times per
timeout; for each it runs ``requeue_worker.lua``, which checks the silence
again atomically and requeues everything that worker held. The worker
restarted by its supervisor, or any other live worker, does this, so a kill
-9 or an OOM kill is recovered within about 25 s. The same sweep forgets
expired claims (``expire_claims.lua``).

A worker that finds it was declared dead (it was frozen, or cut off from
Redis, for longer than the timeout) stops at once: its events are back in
the queue, and carrying on would send them twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from forwarder.constants import HEARTBEATS_PER_TIMEOUT, WORKER_DEAD_AFTER_SECONDS
from workers.holding import Holding

log = logging.getLogger("distinct_forwarder.heartbeat")


class Heartbeat:
    """The heartbeat and dead-worker sweep of one worker process (a daemon thread)."""

    def __init__(self, holding: Holding, info: Callable[[], dict[str, Any]],
                 on_declared_dead: Callable[[], None],
                 on_recovered: Callable[[str], None] | None = None,
                 extra_sweeps: list[Callable[[], object]] | None = None,
                 dead_after: float = WORKER_DEAD_AFTER_SECONDS):
        self.holding = holding
        self.info = info
        self.on_declared_dead = on_declared_dead
        self.on_recovered = on_recovered
        self.extra_sweeps = extra_sweeps or []
        self.dead_after = dead_after
        self.interval = dead_after / HEARTBEATS_PER_TIMEOUT
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> None:
        """The first beat, before the worker takes anything; Redis errors propagate."""
        self.holding.beat(first=True, info=self.info())

    def sweep(self) -> int:
        """Requeue what silent workers held; returns how many events came back."""
        total = 0
        for worker in self.holding.silent_workers(self.dead_after):
            n = self.holding.requeue_worker(worker, self.dead_after)
            if n >= 0:
                total += n
                log.warning("worker %s was silent for over %.0f s (killed?): requeued the %d "
                            "events it held", worker, self.dead_after, n)
                if self.on_recovered is not None:
                    self.on_recovered(worker)
        self.holding.expire_claims()
        for extra in self.extra_sweeps:
            extra()
        return total

    def _loop(self) -> None:
        next_sweep = 0.0
        failing = False
        while not self._stop.is_set():
            try:
                if not self.holding.beat(info=self.info()):
                    log.critical("this worker (%s) was declared dead after %.0f s without a "
                                 "heartbeat and its events were requeued; stopping now",
                                 self.holding.worker, self.dead_after)
                    self.on_declared_dead()
                    return
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.interval
                    self.sweep()
                if failing:
                    log.warning("heartbeat: Redis is back")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("heartbeat: Redis unavailable (%s); will keep trying",
                                type(exc).__name__)
                failing = True
            except Exception:
                log.exception("heartbeat: unexpected error")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
