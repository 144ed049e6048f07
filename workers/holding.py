"""What one worker process holds, and how it comes back when the worker dies.

A worker takes events off the queue into a hash of its own,
``held:{worker}``, in one atomic step (``take.lua``): from then until the
event's outcome is stored (``finish.lua``, workers/outcomes.py) or it is
handed back (``requeue_held.lua``), the event is *held by that worker* and
nowhere else. The worker's heartbeat says it is alive; a worker silent for
``WORKER_DEAD_AFTER_SECONDS`` is dead, and the first live worker to notice
requeues everything it held (``requeue_worker.lua``), so a kill -9 or an OOM
kill costs seconds, not a visibility timeout. docs/lifecycle.md has the whole
picture; this module is the only one that touches these keys.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, cast

import redis

from forwarder import constants as C
from forwarder.scripts import script

_TAKE = script("take", "workers")
_REQUEUE_HELD = script("requeue_held", "workers")
_REQUEUE_WORKER = script("requeue_worker", "workers")
_BEAT = script("beat", "workers")
_EXPIRE_CLAIMS = script("expire_claims", "workers")


def new_worker_id() -> str:
    """``host:pid:random``: unique per process start, readable in ``status``."""
    host = socket.gethostname().replace("|", "_") or "localhost"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Taken:
    """A batch just taken: its id and its events, field ``{batch}:{n}`` for the n-th."""

    batch: str
    items: list[bytes]

    def field(self, n: int) -> str:
        return f"{self.batch}:{n}"


class Holding:
    """The held events of one worker (``worker``), and the registry of all workers."""

    def __init__(self, client: redis.Redis, namespace: str, worker: str):
        self.client = client
        self.namespace = namespace
        self.worker = worker
        k = lambda name: C.key(namespace, name)  # noqa: E731
        self.queue_key = k(C.QUEUE)
        self.workers_key = k(C.WORKERS)
        self.probe_key = k(C.BREAKER_PROBE)
        self.held_key = self.held_key_of(worker)
        self.landing_key = k(C.LANDING_PREFIX + worker)
        self.info_key = k(C.WORKER_INFO_PREFIX + worker)

    def held_key_of(self, worker: str) -> str:
        return C.key(self.namespace, C.HELD_PREFIX + worker)

    # --- taking ------------------------------------------------------------------
    def take(self, batch: str, limit: int, free: int, least: int = 1) -> Taken:
        """Hold up to ``limit`` queued events (this worker's share for ``free`` slots,
        but at least ``least`` if queued)."""
        items = _TAKE(self.client, queue=self.queue_key, landing=self.landing_key,
                      held=self.held_key, batch=batch, limit=limit, free=max(1, free),
                      least=max(1, least))
        return Taken(batch, [bytes(i) for i in items])

    def wait_for_work(self, timeout: float) -> bool:
        """Block until the queue has an event (moved into this worker's landing list).

        The next :meth:`take` holds it; if this worker dies first, the landing
        list is requeued with everything else it held.
        """
        moved = self.client.blmove(self.queue_key, self.landing_key, timeout,  # type: ignore[arg-type]
                                   "RIGHT", "LEFT")
        return moved is not None

    def load(self, batch: str, count: int) -> list[tuple[str, bytes]]:
        """The events of a held batch still held: (field, event) pairs."""
        fields = [f"{batch}:{n}" for n in range(1, count + 1)]
        if not fields:
            return []
        values = self.client.hmget(self.held_key, fields)
        return [(f, v if isinstance(v, bytes) else str(v).encode())
                for f, v in zip(fields, values, strict=True) if v is not None]

    def requeue_held(self, fields: list[str]) -> int:
        """Hand events back: those of ``fields`` still held go back onto the queue."""
        if not fields:
            return 0
        return int(_REQUEUE_HELD(self.client, held=self.held_key, queue=self.queue_key,
                                 rest=fields))

    # --- heartbeat and recovery -----------------------------------------------------
    def beat(self, first: bool = False, info: dict[str, Any] | None = None) -> bool:
        """Say this worker is alive; False if it was declared dead meanwhile."""
        flat: list[Any] = []
        for name, value in (info or {}).items():
            flat += [name, value]
        return bool(_BEAT(self.client, workers=self.workers_key, worker_info=self.info_key,
                          worker=self.worker, first="1" if first else "0",
                          info_ttl=C.WORKER_INFO_TTL_SECONDS, rest=flat))

    def silent_workers(self, silent_for: float) -> list[str]:
        """Workers whose last heartbeat is older than ``silent_for`` seconds (Redis clock)."""
        seconds, micros = cast(tuple[int, int], self.client.time())
        now = seconds + micros / 1e6
        found = self.client.zrangebyscore(self.workers_key, "-inf", now - silent_for)
        return [w.decode() if isinstance(w, bytes) else str(w) for w in found
                if (w.decode() if isinstance(w, bytes) else str(w)) != self.worker]

    def requeue_worker(self, worker: str, silent_for: float | None) -> int:
        """Requeue everything ``worker`` holds and forget it; -1 if it turned out alive.

        ``silent_for`` None: unconditionally (this worker, as it exits).
        """
        k = lambda name: C.key(self.namespace, name)  # noqa: E731
        return int(_REQUEUE_WORKER(
            self.client, workers=self.workers_key, worker_info=k(C.WORKER_INFO_PREFIX + worker),
            held=self.held_key_of(worker), landing=k(C.LANDING_PREFIX + worker),
            queue=self.queue_key, claims=k(C.CLAIMS), claim_tokens=k(C.CLAIM_TOKENS),
            legacy_claim_prefix=k(C.LEGACY_CLAIM_PREFIX), probe=self.probe_key,
            worker=worker, silent_for="" if silent_for is None else silent_for))

    def expire_claims(self) -> int:
        """Forget claims past their time (housekeeping: they are free already)."""
        k = lambda name: C.key(self.namespace, name)  # noqa: E731
        return int(_EXPIRE_CLAIMS(self.client, claims=k(C.CLAIMS),
                                  claim_tokens=k(C.CLAIM_TOKENS)))

    def claim_token(self) -> str:
        """A claim token of this worker: ``{worker}|{random}``, released if it dies."""
        return f"{self.worker}|{secrets.token_hex(8)}"
