"""Everything the forwarder keeps in Redis, behind one small class.

Each state change that must not half-happen (a due retry moving back to the
queue, a dead letter being replayed, an event's in-flight claim) is one Lua
script or one MULTI transaction, so any number of workers and operator tools
can run at once without losing or doubling an event. Only commands that
exist in Redis 6.2 are used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from forwarder import constants as C
from forwarder.config import mask_url

ClaimState = Literal["claimed", "delivered", "busy"]
ReplayState = Literal["replayed", "skipped", "missing"]

# Move up to ARGV[2] messages due at or before ARGV[1] from the retry set to
# the consuming end of the queue. Atomic: a message is moved exactly once,
# however many workers run this at the same moment.
_PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, msg in ipairs(due) do
  redis.call('RPUSH', KEYS[2], msg)
  redis.call('ZREM', KEYS[1], msg)
end
return #due
"""

# Before a POST: 'delivered' if the id is in the dedupe window, 'busy' if
# another worker holds the claim, else take the claim (token, TTL in ms).
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'delivered' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return 'claimed' end
return 'busy'
"""

# Release a claim only if it is still ours.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Replay dead letters: ARGV holds (id, message) pairs. An entry whose id was
# delivered meanwhile is dropped as 'skipped'; otherwise its message is pushed
# and only then the entry removed, in the same atomic step.
_REPLAY_LUA = """
local out = {}
for i = 1, #ARGV, 2 do
  local id, msg = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    table.insert(out, 'missing')
  elseif redis.call('EXISTS', KEYS[4] .. id) == 1 then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    table.insert(out, 'skipped')
  else
    redis.call('LPUSH', KEYS[3], msg)
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    table.insert(out, 'replayed')
  end
end
return out
"""


def connect(redis_url: str, *, timeout: float | None = None, retries: int = 1) -> redis.Redis:
    """A Redis client; ``timeout`` bounds connect and every command."""
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=30,
        client_name="distinct-forwarder",
    )


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _minute(now: float) -> int:
    return int(now // 60)


class Store:
    """The forwarder's Redis state for one namespace."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client = client
        self.namespace = namespace
        k = lambda name: C.key(namespace, name)  # noqa: E731
        self.queue_key = k(C.QUEUE)
        self.retry_key = k(C.RETRY_SET)
        self.dlq_key = k(C.DLQ_ENTRIES)
        self.dlq_index_key = k(C.DLQ_INDEX)
        self.delivered_prefix = k(C.DELIVERED_PREFIX)
        self.inflight_prefix = k(C.INFLIGHT_PREFIX)
        self.stats_prefix = k(C.STATS_PREFIX)
        self._promote = client.register_script(_PROMOTE_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._replay = client.register_script(_REPLAY_LUA)

    # --- queue -------------------------------------------------------------
    def enqueue(self, messages: Sequence[str]) -> None:
        """Append messages to the queue in one round trip."""
        if messages:
            self.client.lpush(self.queue_key, *messages)

    def queue_depth(self) -> int:
        return int(self.client.llen(self.queue_key))

    # --- retry set -----------------------------------------------------------
    def promote_due(self, now: float, limit: int = C.PROMOTE_BATCH) -> int:
        """Move retries due by ``now`` back to the queue; returns how many."""
        return int(self._promote(keys=[self.retry_key, self.queue_key], args=[now, limit]))

    def retry_depth(self) -> int:
        return int(self.client.zcard(self.retry_key))

    def next_retry_due(self) -> float | None:
        first = self.client.zrange(self.retry_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    # --- per-event claim and outcome ---------------------------------------
    def claim(self, event_id: str, token: str, ttl_seconds: float) -> ClaimState:
        state = self._claim(
            keys=[self.delivered_prefix + event_id, self.inflight_prefix + event_id],
            args=[token, max(1, int(ttl_seconds * 1000))],
        )
        return cast(ClaimState, state.decode() if isinstance(state, bytes) else state)

    def _finish(
        self, event_id: str, token: str | None, outcome: str, now: float, pipe: Any
    ) -> None:
        if token is not None:
            self._release(keys=[self.inflight_prefix + event_id], args=[token], client=pipe)
        stats = self.stats_prefix + str(_minute(now))
        pipe.hincrby(stats, outcome, 1)
        pipe.expire(stats, 2 * 3600)

    def mark_delivered(self, event_id: str, token: str | None, ttl: float, now: float) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.delivered_prefix + event_id, int(now), ex=max(1, int(ttl)))
            self._finish(event_id, token, "delivered", now, pipe)
            pipe.execute()

    def schedule_retry(
        self, event_id: str, token: str | None, message: str, due: float, now: float,
        outcome: str = "retried",
    ) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.retry_key, {message: due})
            self._finish(event_id, token, outcome, now, pipe)
            pipe.execute()

    def dead_letter(self, entry: dict[str, Any], token: str | None, now: float) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.dlq_key, entry["id"], json.dumps(entry, separators=(",", ":")))
            pipe.zadd(self.dlq_index_key, {entry["id"]: now})
            self._finish(entry["id"], token, "dead_lettered", now, pipe)
            pipe.execute()

    def is_delivered(self, event_id: str) -> bool:
        return bool(self.client.exists(self.delivered_prefix + event_id))

    # --- dead-letter queue ---------------------------------------------------
    def dlq_depth(self) -> int:
        return int(self.client.hlen(self.dlq_key))

    def dlq_ids(self) -> list[str]:
        """Every dead-letter id, oldest first."""
        return [_text(i) for i in self.client.zrange(self.dlq_index_key, 0, -1)]

    def dlq_get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)
        if not ids:
            return []
        raw = self.client.hmget(self.dlq_key, ids)
        return [json.loads(r) if r is not None else None for r in raw]

    def dlq_replay(self, pairs: Sequence[tuple[str, str]]) -> list[ReplayState]:
        """Push each (id, message) back to the queue and drop its entry, atomically."""
        if not pairs:
            return []
        args = [x for pair in pairs for x in pair]
        states = self._replay(
            keys=[self.dlq_key, self.dlq_index_key, self.queue_key, self.delivered_prefix],
            args=args,
        )
        return [cast(ReplayState, _text(s)) for s in states]

    def dlq_delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.dlq_key, *ids)
            pipe.zrem(self.dlq_index_key, *ids)
            removed, _ = pipe.execute()
        return int(removed)

    # --- counters --------------------------------------------------------------
    def outcome_counts(self, now: float, minutes: int) -> dict[str, int]:
        """Delivered / retried / dead-lettered over the last ``minutes`` minutes."""
        current = _minute(now)
        with self.client.pipeline(transaction=False) as pipe:
            for m in range(current - minutes + 1, current + 1):
                pipe.hgetall(self.stats_prefix + str(m))
            buckets = pipe.execute()
        totals: dict[str, int] = {"delivered": 0, "retried": 0, "dead_lettered": 0}
        for bucket in buckets:
            for name, count in bucket.items():
                totals[name.decode()] = totals.get(name.decode(), 0) + int(count)
        return totals

    def wipe(self) -> int:
        """Delete every key of this namespace (tests and the demo only)."""
        deleted = 0
        for batch in _chunks(self.client.scan_iter(match=f"{self.namespace}:*", count=1000)):
            deleted += int(self.client.delete(*batch))
        return deleted


def _chunks(items: Iterable[Any], size: int = 500) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def now() -> float:
    return time.time()
