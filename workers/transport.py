"""kombu's Redis transports, made safe against a kill -9 mid-fetch, one reconnect bug closed.

Fetching: kombu takes a message with BRPOP and records it in its ``unacked``
hash only afterwards, so a worker killed in between loses that message. These
channels fetch with ``BLMOVE`` into their own fetch list instead, and take the
message out of it only once kombu's record exists; the promoter's sweep queues
again whatever a dead worker left there (forwarder/fetching.py). This needs a
single queue and a single priority step, which workers/app.py configures;
otherwise the channel falls back to kombu's BRPOP.

Reconnecting: with kombu 5.7 and Celery 5.7, a broker connection lost under
load is closed twice: Celery's ``collect()`` detaches the transport, then
``close()`` closes the same channel again, whose restore of unacknowledged
messages rebuilds a connection pool from a transport that is gone. The
AttributeError that follows is not a connection error, so Celery calls it
"Unrecoverable" and the worker stops instead of reconnecting (seen in the
fault suite when Redis is killed and restarted). Here that case raises a
connection error instead, which kombu's close path expects and ignores.

kombu also builds a new redis-py client object for every acknowledgement and
every prefetch record, which costs more CPU than the commands themselves.
These channels keep one per connection pool: a redis-py client is thread-safe
and holds no connection of its own, so sharing it changes only the cost.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from forwarder.constants import FETCH_PREFIX, FETCHER_HEARTBEAT_SECONDS, FETCHERS


class _ForwarderChannel:
    connection: Any
    client: Any
    pool: Any
    active_queues: Any
    priority_steps: Any
    global_keyprefix: str
    brpop_timeout: Any
    _queue_cycle: Any
    _in_poll: Any
    _shared_client: tuple[Any, Any] | None = None
    _plain: tuple[Any, redis.Redis] | None = None
    _fetch_list: str | None = None
    _fetching_from: str | None = None
    _next_heartbeat = 0.0

    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        shared = self._shared_client
        # A new pool (after a reconnect) gets a new client.
        if shared is None or shared[0] is not pool:
            shared = (pool, super()._create_client())  # type: ignore[misc]
            self._shared_client = shared
        return shared[1]

    # --- fetching into a fetch list ---------------------------------------------
    def _plain_client(self) -> redis.Redis:
        # Without kombu's key prefixing, whose command table varies by version:
        # the forwarder's keys below are spelled out in full.
        pool = self.pool
        if self._plain is None or self._plain[0] is not pool:
            self._plain = (pool, redis.Redis(connection_pool=pool))
        return self._plain[1]

    def _fetch_list_key(self) -> str:
        if self._fetch_list is None:
            self._fetch_list = (f"{self.global_keyprefix}{FETCH_PREFIX}{socket.gethostname()}:"
                                f"{os.getpid()}:{uuid.uuid4().hex[:8]}")
        return self._fetch_list

    def _heartbeat(self) -> None:
        # Registers the fetch list for the sweepers, and says it is alive.
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._plain_client().zadd(f"{self.global_keyprefix}{FETCHERS}",
                                       {self._fetch_list_key(): time.time()})
            self._next_heartbeat = now + FETCHER_HEARTBEAT_SECONDS

    def _brpop_start(self, timeout: Any = None) -> None:
        if len(self.active_queues) != 1 or len(self.priority_steps) != 1:
            self._fetching_from = None
            return super()._brpop_start(timeout)  # type: ignore[misc, no-any-return]
        queues = self._queue_cycle.consume(1)
        if not queues:
            return None
        self._heartbeat()
        self._fetching_from = queues[0]
        self._in_poll = self.client.connection
        self.__dict__["_brpop_sent_at"] = time.monotonic()  # what kombu records here
        source = self.global_keyprefix + queues[0]
        self.client.connection.send_command(
            "BLMOVE", source, self._fetch_list_key(), "RIGHT", "LEFT",
            self.brpop_timeout if timeout is None else (timeout or 0))
        return None

    def _brpop_read(self, **options: Any) -> bool:
        queue = self._fetching_from
        if queue is None:
            return super()._brpop_read(**options)  # type: ignore[misc, no-any-return]
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                # Reconnect on the next iteration, as kombu does.
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            try:
                payload = loads(bytes_to_str(item))
            except ValueError:
                # Not a message at all: kombu would drop it too.
                self._plain_client().lrem(self._fetch_list_key(), 1, item)
                raise
            self.connection._deliver(payload, queue)
            # kombu's unacked record holds it now; only then does it leave the
            # fetch list (if this raised, the sweep brings it back).
            self._plain_client().lrem(self._fetch_list_key(), 1, item)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


class Channel(_ForwarderChannel, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_ForwarderChannel, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
