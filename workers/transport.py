"""kombu's Redis transports, with one reconnect bug closed.

With kombu 5.7 and Celery 5.7, a broker connection lost under load is closed
twice: Celery's ``collect()`` detaches the transport, then ``close()`` closes
the same channel again, whose restore of unacknowledged messages rebuilds a
connection pool from a transport that is gone. The AttributeError that
follows is not a connection error, so Celery calls it "Unrecoverable" and the
worker stops instead of reconnecting (seen in the fault suite when Redis is
killed and restarted). Here that case raises a connection error instead,
which kombu's close path expects and ignores, and the worker reconnects.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class _ClosedTransportGuard:
    connection: Any

    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("the broker connection is already closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class Channel(_ClosedTransportGuard, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_ClosedTransportGuard, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
