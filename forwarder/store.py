"""The forwarder's Redis state as producers and operators see it.

Producers only push events (one LPUSH, no script); operator tools read
depths, the breaker and the worker registry, and work on the dead-letter
queue. Each change that must not half-happen (a replay, an import, a
deletion) is one Lua script from ``forwarder/lua``. What only a worker does
(holding, outcomes, promotion) lives in ``workers/``. Only commands that
exist in Redis 6.2 are used.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from forwarder import constants as C
from forwarder.masking import mask_url
from forwarder.scripts import script

ReplayState = Literal["replayed", "skipped", "missing"]
DLQ_REASONS = ("rejected", "exhausted", "expired", "malformed")
#: How much of an unreadable entry a tool shows.
DETAIL_SHOWN = 200

_REPLAY = script("replay")
_DLQ_DELETE = script("dlq_delete")
_DLQ_EXPIRE = script("dlq_expire")
_DLQ_IMPORT = script("dlq_import")
_IS_DELIVERED = script("is_delivered")


def _client_options(timeout: float | None, retry: Any,
                    max_connections: int | None = None) -> dict[str, Any]:
    """What every client of the forwarder is built with, blocking or asyncio."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A retry after a connection error also re-asks the sentinels.
        "retry": retry,
        "health_check_interval": 30,
        "client_name": "distinct-forwarder",
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    return options


def _sentinel_master(sentinel_class: Any, redis_url: str, timeout: float | None,
                     options: dict[str, Any]) -> Any:
    from forwarder.config import parse_sentinel_url

    target = parse_sentinel_url(redis_url)
    sentinels = sentinel_class(
        list(target.hosts),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    return sentinels.master_for(target.master, db=target.db, username=target.username,
                                password=target.password, **options)


def connect(redis_url: str, *, timeout: float | None = None, retries: int = 1,
            max_connections: int | None = None,
            retry_on: tuple[type[redis.RedisError], ...] | None = None) -> redis.Redis:
    """A Redis client; ``timeout`` bounds connect and every command.

    ``max_connections`` raises the pool's limit (redis-py's default is 100)
    for a process with more threads than that. ``retry_on`` narrows the errors
    retried (by default a connection error or a timeout).

    ``redis://``, ``unix://`` and ``rediss://`` (TLS; ``ssl_cert_reqs``,
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` query parameters pass
    through to redis-py) go to redis-py as they are. ``sentinel://h1,h2/master/db``
    asks the sentinels for the current master on each (re)connection, so a
    failover needs no new configuration.
    """
    retry = (Retry(NoBackoff(), retries) if retry_on is None
             else Retry(NoBackoff(), retries, retry_on))
    options = _client_options(timeout, retry, max_connections)
    if redis_url.startswith("sentinel://"):
        from redis.sentinel import Sentinel

        return cast(redis.Redis, _sentinel_master(Sentinel, redis_url, timeout, options))
    return redis.Redis.from_url(redis_url, **options)


def connect_async(redis_url: str, *, timeout: float | None = None, retries: int = 1,
                  retry_on: tuple[type[redis.RedisError], ...] | None = None
                  ) -> redis.asyncio.Redis:
    """:func:`connect` for asyncio (``redis.asyncio``): the same URLs and options.

    The client's connections belong to the event loop that first uses them,
    so an asyncio program needs one client per loop.
    """
    retry = (AsyncRetry(NoBackoff(), retries) if retry_on is None
             else AsyncRetry(NoBackoff(), retries, retry_on))
    options = _client_options(timeout, retry)
    if redis_url.startswith("sentinel://"):
        return cast(redis.asyncio.Redis, _sentinel_master(AsyncSentinel, redis_url, timeout,
                                                        options))
    return redis.asyncio.Redis.from_url(redis_url, **options)


def redis_error_text(exc: Exception, redis_url: str) -> str:
    """An error message about Redis that never contains its password."""
    text = str(exc)
    try:
        from urllib.parse import urlsplit

        password = urlsplit(redis_url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    return f"Redis at {mask_url(redis_url)} failed: {type(exc).__name__}: {text}"


def dedupe_member(event_id: str) -> bytes:
    """The compact form of an id in the dedupe window: 16 bytes for a UUID."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        return b"s:" + event_id.encode("utf-8", "surrogatepass")
    if str(parsed) != event_id:
        return b"s:" + event_id.encode("utf-8", "surrogatepass")
    return parsed.bytes


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class BreakerState:
    """The shared circuit breaker as workers left it in Redis."""

    state: str
    reason: str
    open_until: float | None
    cooldown: float
    opened_count: int

    @property
    def hint(self) -> str:
        if self.state != "open":
            return ""
        if self.reason == "auth":
            return "Distinct refuses the API key: check DISTINCT_API_KEY"
        if self.reason == "deployment":
            return "requests fail before Distinct answers: check DISTINCT_API_URL and TLS"
        return "Distinct keeps failing; deliveries wait in Redis"


@dataclass(frozen=True)
class WorkerInfo:
    """One live worker process, as its heartbeat publishes it."""

    id: str
    last_beat: float
    held: int
    info: dict[str, str]


class Store:
    """The forwarder's Redis state for one namespace."""

    def __init__(self, client: redis.Redis, namespace: str,
                 dedupe_ttl: float = C.DEFAULT_DEDUPE_TTL):
        self.client = client
        self.namespace = namespace
        self.dedupe_ttl = dedupe_ttl
        k = lambda name: C.key(namespace, name)  # noqa: E731
        self.queue_key = k(C.QUEUE)
        self.retry_key = k(C.RETRY_SET)
        self.dlq_key = k(C.DLQ_ENTRIES)
        self.dlq_index_key = k(C.DLQ_INDEX)
        self.dlq_reason_prefix = k(C.DLQ_REASON_PREFIX)
        self._dedupe = {"dedupe_prefix": k(C.DEDUPE_PREFIX),
                        "legacy_dedupe_prefix": k(C.LEGACY_DEDUPE_PREFIX)}
        self.stats_prefix = k(C.STATS_PREFIX)
        self.breaker_key = k(C.BREAKER)
        self.workers_key = k(C.WORKERS)
        self.worker_info_prefix = k(C.WORKER_INFO_PREFIX)
        self.held_prefix = k(C.HELD_PREFIX)
        self._dlq = {"dlq": self.dlq_key, "dlq_index": self.dlq_index_key,
                     "dlq_reason_prefix": self.dlq_reason_prefix}

    # --- queue -------------------------------------------------------------
    def enqueue(self, items: Sequence[str | bytes]) -> None:
        """Add events to the queue: one LPUSH, one round trip, no script."""
        if items:
            self.client.lpush(self.queue_key, *items)

    def queue_depth(self) -> int:
        return int(self.client.llen(self.queue_key))

    def oldest_queued(self) -> str | None:
        """The event at the consuming end of the queue (the next one out)."""
        raw = self.client.lindex(self.queue_key, -1)
        return text(raw) if raw is not None else None

    # --- retry set -----------------------------------------------------------
    def retry_depth(self) -> int:
        return int(self.client.zcard(self.retry_key))

    def retry_due(self, before: float) -> int:
        """Retries due by ``before`` (epoch seconds)."""
        return int(self.client.zcount(self.retry_key, "-inf", before))

    def next_retry_due(self) -> float | None:
        first = self.client.zrange(self.retry_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def first_retry(self) -> str | None:
        first = self.client.zrange(self.retry_key, 0, 0)
        return text(first[0]) if first else None

    # --- workers (what their heartbeats publish) --------------------------------
    def workers(self) -> list[WorkerInfo]:
        """Every registered worker, most recent heartbeat first."""
        entries = cast(list[tuple[bytes, float]],
                       self.client.zrevrange(self.workers_key, 0, -1, withscores=True))
        if not entries:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for worker, _ in entries:
                pipe.hgetall(self.worker_info_prefix + text(worker))
                pipe.hlen(self.held_prefix + text(worker))
            replies = pipe.execute()
        return [WorkerInfo(text(worker), float(beat), int(replies[2 * i + 1]),
                           {text(k): text(v) for k, v in replies[2 * i].items()})
                for i, (worker, beat) in enumerate(entries)]

    def breaker(self) -> BreakerState:
        raw = {text(k): text(v) for k, v in self.client.hgetall(self.breaker_key).items()}
        is_open = raw.get("state") == "open"
        return BreakerState(
            state="open" if is_open else "closed",
            reason=raw.get("reason", "") if is_open else "",
            open_until=float(raw["open_until"]) if is_open and "open_until" in raw else None,
            cooldown=float(raw.get("cooldown") or 0),
            opened_count=int(raw.get("opened_count") or 0),
        )

    # --- dedupe window -------------------------------------------------------------
    def is_delivered(self, event_id: str) -> bool:
        """Whether Distinct accepted this id within the dedupe window."""
        return bool(_IS_DELIVERED(self.client, **self._dedupe, member=dedupe_member(event_id),
                                  dedupe_ttl=self.dedupe_ttl))

    # --- dead-letter queue ---------------------------------------------------
    def dlq_depth(self) -> int:
        return int(self.client.hlen(self.dlq_key))

    def dlq_depth_by_reason(self) -> dict[str, int]:
        with self.client.pipeline(transaction=False) as pipe:
            for reason in DLQ_REASONS:
                pipe.zcard(self.dlq_reason_prefix + reason)
            counts = pipe.execute()
        return {r: int(n) for r, n in zip(DLQ_REASONS, counts, strict=True) if n}

    def dlq_expiring(self, now: float, ttl: float, within: float) -> int:
        """How many entries retention removes in the next ``within`` seconds."""
        return int(self.client.zcount(self.dlq_index_key, "-inf", now - ttl + within))

    def dlq_expire(self, now: float, ttl: float, batch: int = 1000) -> int:
        """Remove entries older than ``ttl``; returns how many."""
        removed = 0
        while True:
            n = int(_DLQ_EXPIRE(self.client, **self._dlq, before=now - ttl, limit=batch))
            removed += n
            if n < batch:
                return removed

    def _dlq_window(self, since: float | None, until: float | None,
                    reason: str | None) -> tuple[str, float | str, float | str]:
        key = self.dlq_reason_prefix + reason if reason else self.dlq_index_key
        return key, "-inf" if since is None else since, "+inf" if until is None else until

    def dlq_ids(self, since: float | None = None, until: float | None = None,
                reason: str | None = None, limit: int | None = None) -> list[str]:
        """Dead-letter ids, oldest first, optionally by time and reason (and limit)."""
        key, low, high = self._dlq_window(since, until, reason)
        first = (0, limit) if limit is not None else ()  # ZRANGEBYSCORE's LIMIT 0 limit
        return [text(i) for i in self.client.zrangebyscore(key, low, high, *first)]

    def dlq_page_ids(self, start: int, count: int, since: float | None = None,
                     until: float | None = None, reason: str | None = None) -> list[str]:
        """``count`` ids from ``start``, newest first: a page costs its size, not the DLQ's."""
        key, low, high = self._dlq_window(since, until, reason)
        found = (self.client.zrevrange(key, start, start + count - 1)
                 if since is None and until is None else
                 self.client.zrevrangebyscore(key, high, low, start=start, num=count))
        return [text(i) for i in found]

    def dlq_count(self, since: float | None = None, until: float | None = None,
                  reason: str | None = None) -> int:
        """How many ids :meth:`dlq_ids` would return, without reading them."""
        return int(self.client.zcount(*self._dlq_window(since, until, reason)))

    def dlq_get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)
        if not ids:
            return []
        raw = self.client.hmget(self.dlq_key, ids)
        return [_entry(i, r) for i, r in zip(ids, raw, strict=True)]

    def dlq_put(self, entries: Sequence[dict[str, Any]]) -> None:
        """Store checked entries (``dlq import``) in one atomic step; an existing id is replaced.

        The caller validates every entry first (forwarder/dlq.py); nothing
        here deletes an entry unless its replacement is written in the same step.
        """
        quads: list[Any] = []
        for entry in entries:
            quads += [entry["id"], json.dumps(entry, separators=(",", ":")),
                      float(entry["dead_at"]), entry["reason"]]
        if quads:
            _DLQ_IMPORT(self.client, **self._dlq, rest=quads)

    def dlq_replay(self, pairs: Sequence[tuple[str, str]]) -> list[ReplayState]:
        """Requeue each (id, event) and drop its entry, atomically."""
        if not pairs:
            return []
        triples: list[Any] = []
        for event_id, item in pairs:
            triples += [event_id, dedupe_member(event_id), item]
        states = _REPLAY(self.client, **self._dlq, queue=self.queue_key,
                         **self._dedupe, dedupe_ttl=self.dedupe_ttl,
                         rest=triples)
        return [cast(ReplayState, text(s)) for s in states]

    def dlq_delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(_DLQ_DELETE(self.client, **self._dlq, rest=list(ids)))

    # --- counters --------------------------------------------------------------
    def outcome_series(self, now: float, minutes: int) -> list[tuple[int, dict[str, int]]]:
        """(epoch seconds // 60, outcome counts) per minute of the last ``minutes``."""
        wanted = range(int(now // 60) - minutes + 1, int(now // 60) + 1)
        with self.client.pipeline(transaction=False) as pipe:
            for m in wanted:
                pipe.hgetall(self.stats_prefix + str(m))
            buckets = pipe.execute()
        return [(minute, {"delivered": 0, "retried": 0, "dead_lettered": 0,
                          **{text(k): int(v) for k, v in bucket.items()}})
                for minute, bucket in zip(wanted, buckets, strict=True)]

    def outcome_counts(self, now: float, minutes: int) -> dict[str, int]:
        """Delivered / retried / dead-lettered over the last ``minutes`` minutes."""
        totals = Counter({"delivered": 0, "retried": 0, "dead_lettered": 0})
        for _, counts in self.outcome_series(now, minutes):
            totals.update(counts)
        return dict(totals)

    def wipe(self) -> int:
        """Delete every key of this namespace (tests and the demo only)."""
        deleted = 0
        for batch in _chunks(self.client.scan_iter(match=f"{self.namespace}:*", count=1000)):
            deleted += int(self.client.delete(*batch))
        return deleted


def _entry(entry_id: str, raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("id") == entry_id:
        return value
    # Not what a worker or `dlq import` writes (edited in Redis by hand?):
    # shown as what it is, never a crash of the tool reading it.
    return {"id": entry_id, "reason": "unreadable", "body": None,
            "last_error": "this entry is not valid JSON of a dead letter: "
                          + text(raw)[:DETAIL_SHOWN]}


def _chunks(items: Iterable[Any], size: int = 500) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
