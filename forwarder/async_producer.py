"""The producer API for asyncio apps: ``await capture()`` never blocks the event loop.

FastAPI, Starlette, aiohttp, Quart and Django's async views run on an event
loop; a blocking Redis call, or the spool's fsync, inside a request stalls
every other request of that worker. :class:`AsyncForwarder` does what
:class:`forwarder.Forwarder` does, with the same validation, ids, errors and
guarantee (when the await returns, the event is in Redis or fsynced in the
spool), but:

- the LPUSH is awaited on ``redis.asyncio``, and waits at most
  ``FORWARDER_ENQUEUE_TIMEOUT``;
- the spool's writes and its drain run in a thread (the loop's default
  executor); the back-off after a failure is the blocking producer's own
  state machine (forwarder/enqueue.py), so a dead Redis costs one timed-out
  await now and then, and an fsync in a thread in between.

An asyncio client's connections belong to the loop that opened them, so an
instance keeps one client per running loop (several loops in threads share
one instance safely) and, after a fork, leaves the parent's clients alone and
opens its own. ``await aclose()`` (or ``async with``) closes the current
loop's client; call it before each loop ends (e.g. in the app's lifespan).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import redis
import redis.asyncio

from forwarder.config import Settings
from forwarder.messages import Kind
from forwarder.producer import RETRY_ON, encode_many, encode_one, open_enqueuer
from forwarder.store import connect_async

# As redis.asyncio itself chooses: asyncio.timeout before 3.11.3 mishandles a
# cancellation (redis-py issue 2633); redis-py requires async-timeout there.
# (mypy narrows on the two-part check only; the three-part one is the rule.)
if sys.version_info >= (3, 11) and sys.version_info >= (3, 11, 3):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - Python 3.10 to 3.11.2
    from async_timeout import timeout as _deadline  # type: ignore[no-redef]


class AsyncForwarder:
    """Validates events and enqueues them for delivery to Distinct, from asyncio code."""

    def __init__(
        self,
        redis_url: str | None = None,
        experience: str | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
    ):
        base = settings if settings is not None else Settings.from_env()
        self.settings = base.with_overrides(
            redis_url=redis_url, experience=experience, namespace=namespace
        )
        # A blocking client too: the spool's drain runs in a thread and moves
        # rows with a Lua script (forwarder/spool.py). It opens no connection
        # until the spool has rows to move. (``store`` is for that thread and for
        # tools and tests outside the loop; a coroutine must not call it.)
        self.store, self.spool, self._enqueuer = open_enqueuer(self.settings)
        self._clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}
        self._clients_lock = threading.Lock()
        self._pid = os.getpid()
        #: A parent's clients after a fork: theirs to use and close, never ours.
        self._inherited: list[redis.asyncio.Redis] = []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AsyncForwarder:
        """An AsyncForwarder configured by REDIS_URL, DISTINCT_EXPERIENCE, FORWARDER_*."""
        return cls(settings=Settings.from_env(environ))

    # --- public API --------------------------------------------------------
    async def capture(
        self,
        event: Mapping[str, Any],
        experience: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Validate a Capture Analytics event and enqueue it; returns its id."""
        event_id, items = encode_one(self.settings, "capture", event, experience,
                                     idempotency_key)
        await self._push(items)
        return event_id

    async def user_analytics(
        self, event: Mapping[str, Any], idempotency_key: str | None = None
    ) -> str:
        """Validate a User Analytics event and enqueue it; returns its id."""
        event_id, items = encode_one(self.settings, "user_analytics", event, None,
                                     idempotency_key)
        await self._push(items)
        return event_id

    async def capture_many(
        self,
        events: Iterable[Mapping[str, Any]],
        experience: str | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Validate every Capture Analytics event, then enqueue all in one round trip.

        Nothing is enqueued if any event is invalid; error keys carry the
        item's index (``"3.email"``).
        """
        return await self._many("capture", events, experience, idempotency_keys)

    async def user_analytics_many(
        self,
        events: Iterable[Mapping[str, Any]],
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[str]:
        """Like :meth:`capture_many`, for User Analytics events."""
        return await self._many("user_analytics", events, None, idempotency_keys)

    async def aclose(self) -> None:
        """Close the Redis connections of the running loop (other loops keep theirs).

        The instance stays usable: a later call opens new connections.
        """
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.pop(loop, None) if self._pid == os.getpid() else None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> AsyncForwarder:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.aclose()

    # --- internals -----------------------------------------------------------
    async def _many(self, kind: Kind, events: Iterable[Mapping[str, Any]],
                    experience: str | None, keys: Iterable[str | None] | None) -> list[str]:
        ids, items = encode_many(self.settings, kind, events, experience, keys)
        await self._push(items)
        return ids

    async def _push(self, items: list[str]) -> None:
        # forwarder.enqueue.SpoolingEnqueuer.push, with the blocking steps off the loop.
        if not items:
            return  # capture_many([]): an LPUSH needs at least one item (Store.enqueue)
        state = self._enqueuer
        now = time.monotonic()
        if state.redis_allowed(now):
            try:
                await self._lpush(items)
            except redis.RedisError as exc:
                state.redis_failed(now, exc)  # raises EnqueueError when there is no spool
            else:
                if state.redis_answered(now):
                    await asyncio.to_thread(state.drain_some)
                return
        await asyncio.to_thread(state.to_spool, items)

    async def _lpush(self, items: list[str]) -> None:
        """One LPUSH, given up after FORWARDER_ENQUEUE_TIMEOUT whatever the cause
        (connect, a retried broken connection, the reply)."""
        limit = self.settings.enqueue_timeout
        try:
            async with _deadline(limit):
                await self._client().lpush(self.store.queue_key, *items)
        except asyncio.TimeoutError:
            raise redis.TimeoutError(f"no answer within {limit:g} s") from None

    def _client(self) -> redis.asyncio.Redis:
        """The running loop's client, opened on first use."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is not None and self._pid == os.getpid():
            return client
        with self._clients_lock:
            if self._pid != os.getpid():
                # Forked: the parent's connections share its sockets (and maybe its
                # epoll). Using them would mix replies, closing them would cut the
                # parent's; they are kept, untouched, for the life of the process.
                self._inherited.extend(self._clients.values())
                self._clients = {}
                self._pid = os.getpid()
            # Loops that ended without aclose(): their transports are dead; dropping
            # the clients lets the garbage collector close the sockets.
            for ended in [known for known in self._clients if known.is_closed()]:
                del self._clients[ended]
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = connect_async(
                    self.settings.redis_url, timeout=self.settings.enqueue_timeout,
                    retry_on=RETRY_ON)
            return client
