"""Everything one worker process runs next to Celery's pool, started and stopped as one.

- the Deliverer (workers/tasks.py): what the ``distinct.deliver`` tasks call;
- the Dispatcher (workers/dispatcher.py): takes batches, sends their tasks;
- the Heartbeat (workers/heartbeat.py): alive, and requeues dead workers' events;
- the RetryPromoter (workers/promoter.py): due retries back to the queue.

Shutdown (SIGTERM): each task finishes the POST it is in and hands the rest
of its batch back; the dispatcher stops taking; once Celery's pool has
drained, the worker requeues whatever it still holds and unregisters
(:meth:`WorkerRuntime.close`), so a replaced worker leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue

from forwarder import __version__
from forwarder import constants as C
from forwarder.config import Settings
from forwarder.store import Store
from workers import metrics
from workers.deliverer import Deliverer
from workers.dispatcher import Dispatcher
from workers.heartbeat import Heartbeat
from workers.holding import Holding
from workers.promoter import RetryPromoter
from workers.upgrade import drain_legacy

log = logging.getLogger("distinct_forwarder.worker")
#: Batches dispatched beyond the pool's threads, so a thread that finishes
#: finds the next batch waiting instead of waiting for the dispatcher.
READY_BATCHES_MIN = 2


def dispatch_queue(worker: str) -> Queue:
    """The Celery queue through which ``worker`` dispatches its own batches."""
    name = C.DISPATCH_QUEUE_PREFIX + worker
    return Queue(name, Exchange(""), routing_key=name)


class WorkerRuntime:
    """The forwarder's side of one worker process."""

    def __init__(self, app: Celery, settings: Settings, worker: str):
        self.app = app
        self.settings = settings
        self.worker = worker
        self.started_at = time.time()
        self.concurrency = settings.concurrency
        self.deliverer = Deliverer(settings, worker)
        client = self.deliverer.client
        self.store = Store(client, settings.namespace, settings.dedupe_ttl)
        self.holding = self.deliverer.holding
        # The dispatcher blocks on an empty queue: a connection of its own.
        blocking = redis.Redis(connection_pool=client.connection_pool,
                               single_connection_client=True)
        self.dispatcher = Dispatcher(Holding(blocking, settings.namespace, worker),
                                     self._publish, settings.concurrency + READY_BATCHES_MIN,
                                     post_seconds=lambda: self.deliverer.post_time.seconds)
        self.heartbeat = Heartbeat(
            self.holding, self._info, self._declared_dead, on_recovered=self._forget_queue_of,
            extra_sweeps=[lambda: drain_legacy(client, settings.namespace)],
            dead_after=settings.worker_timeout)
        self.promoter = RetryPromoter(self.store, dlq_ttl=settings.dlq_ttl)
        self._started = False
        self._closed = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, concurrency: int) -> None:
        """Register, then start taking, beating and promoting (the worker is up)."""
        self.concurrency = concurrency
        self.dispatcher.capacity = concurrency + max(READY_BATCHES_MIN, concurrency // 8)
        metrics.serve(self.settings.metrics_port, self.settings.metrics_bind)
        self.heartbeat.register()
        self.heartbeat.sweep()  # a predecessor killed on this host comes back now
        self.heartbeat.start()
        self.promoter.start()
        self.dispatcher.start()
        self._started = True
        log.info("worker %s: taking events from %s", self.worker,
                 C.key(self.settings.namespace, C.QUEUE))

    def stop_taking(self) -> None:
        """SIGTERM: running tasks finish their POST and hand the rest back."""
        self.deliverer.stopping.set()
        self.dispatcher.stop()

    def close(self) -> None:
        """After the pool has drained: requeue what is still held, unregister."""
        if not self._started or self._closed.is_set():
            return
        self._closed.set()
        self.dispatcher.stop()
        self.heartbeat.stop()
        self.promoter.stop()
        try:
            requeued = self.holding.requeue_worker(self.worker, None)
            self._forget_queue_of(self.worker)
        except redis.RedisError as exc:
            log.error("could not hand back what this worker holds (%s); the other workers "
                      "requeue it within %.0f s", type(exc).__name__,
                      self.settings.worker_timeout * 1.25)
            return
        if requeued:
            log.info("requeued %d events this worker held but had not started", requeued)
        self.deliverer.distinct.close()

    # --- helpers --------------------------------------------------------------------------
    def _publish(self, batch: str, count: int, argsrepr: str) -> None:
        task = self.app.tasks[C.TASK_NAME]
        task.apply_async(args=[batch, count], queue=dispatch_queue(self.worker),
                         argsrepr=argsrepr, ignore_result=True)

    def _info(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "threads": self.concurrency,
                "started": f"{self.started_at:.3f}", "version": __version__,
                "busy": self.dispatcher.busy()}

    def _declared_dead(self) -> None:
        # Its events are back in the queue: carrying on would send them twice.
        # The supervisor (or systemd, Kubernetes) starts a fresh worker.
        os._exit(75)

    def _forget_queue_of(self, worker: str) -> None:
        """Delete a worker's Celery queue (kombu's public API): its messages point
        at batches that are no longer held, or at nothing."""
        try:
            with self.app.connection_for_write() as conn:
                queue = dispatch_queue(worker)(conn.default_channel)
                queue.declare()
                queue.delete()
        except Exception as exc:  # housekeeping: never worth stopping for
            log.warning("could not delete the Celery queue of worker %s (%s)", worker,
                        type(exc).__name__)
