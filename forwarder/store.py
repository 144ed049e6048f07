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
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from forwarder import constants as C
from forwarder.config import mask_url
from forwarder.fetching import PUSH_FN, RELEASE_LUA, RESCUE_LUA, RESTORE_TAKEN_LUA, TAKE_LUA
from forwarder.gate import (
    BREAKER_FN,
    DELIVERED_FN,
    IS_DELIVERED_LUA,
    NOW_LUA,
    PROMOTE_LUA,
    dedupe_member,
)

ReplayState = Literal["replayed", "skipped", "missing"]
#: The breaker's keys and policy (Gate.breaker_keys, Gate.breaker_policy_args), so
#: outcomes and the breaker's updates happen in one Lua call.
Breaker = tuple[list[str], list[Any]]
#: What an outcome leaves behind: delivered (a dedupe entry), retried or
#: deferred (the message in the retry set), dead_lettered (a DLQ entry), or
#: released (nothing: the claim is given up unsent, the event stays with the task).
FinishOutcome = Literal["delivered", "retried", "deferred", "dead_lettered", "released"]


@dataclass(frozen=True)
class Finish:
    """One event's outcome for :meth:`Store.finish_many`.

    delivered: no payload, score is the dedupe TTL. retried/deferred: payload
    is the message, score its due time. dead_lettered: payload is the entry's
    JSON, score the time of death. ``signal`` ('ok', 'fail', 'auth') feeds the
    breaker; empty for an event that was never sent.
    """

    event_id: str
    outcome: FinishOutcome
    payload: str | bytes = ""
    score: float = 0.0
    signal: str = ""
    reason: str = ""


# Outcomes of a chunk of events, in order, in one atomic step. For each:
# release the in-flight claim (only if still ours), store the outcome, count
# it, and feed the breaker. Returns the breaker's changes ('opened'...).
# KEYS: inflight prefix, stats:minute, delivered prefix, retry, dlq, dlq index,
#       dlq reason prefix, [breaker, probe, window prefix]
# ARGV: token, 6 breaker policy values (or ''), then (id, outcome, payload,
#       score, signal, reason) per event
_FINISH_LUA = NOW_LUA + BREAKER_FN + """
local token = ARGV[1]
local changes = {}
for i = 8, #ARGV, 6 do
  local id, outcome, payload, score = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local inflight = KEYS[1] .. id
  if token ~= '' and redis.call('GET', inflight) == token then redis.call('DEL', inflight) end
  if outcome == 'delivered' then
    local hour = math.floor(now / 3600)
    redis.call('SADD', KEYS[3] .. hour, payload)
    redis.call('EXPIREAT', KEYS[3] .. hour, (hour + 1) * 3600 + math.ceil(tonumber(score)))
  elseif outcome == 'dead_lettered' then
    local ok, entry = pcall(cjson.decode, payload)
    redis.call('HSET', KEYS[5], id, payload)
    redis.call('ZADD', KEYS[6], score, id)
    if ok and type(entry) == 'table' and type(entry['reason']) == 'string' then
      redis.call('ZADD', KEYS[7] .. entry['reason'], score, id)
    end
  elseif outcome ~= 'released' then
    redis.call('ZADD', KEYS[4], score, payload)
  end
  if outcome ~= 'released' then
    redis.call('HINCRBY', KEYS[2], outcome, 1)
  end
  local signal = ARGV[i + 4]
  if signal ~= '' and #KEYS > 7 then
    local change = breaker_record({KEYS[8], KEYS[9], KEYS[10]},
      {signal, token, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[i + 5]})
    if change ~= '' then changes[#changes + 1] = change end
  end
end
redis.call('EXPIRE', KEYS[2], 7200)
return changes
"""

# Remove one dead letter from the hash, the index and its reason's index.
_DLQ_REMOVE_FN = """
local function remove(id)
  local raw = redis.call('HGET', KEYS[1], id)
  if not raw then return 0 end
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and type(entry['reason']) == 'string' then
    redis.call('ZREM', KEYS[3] .. entry['reason'], id)
  end
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  return 1
end
"""

# Replay dead letters: ARGV holds (id, message) pairs. An entry whose id was
# delivered meanwhile is dropped as 'skipped'; otherwise its message is pushed
# and only then the entry removed, in the same atomic step.
# KEYS: dlq hash, dlq index, reason prefix, queue, delivered prefix
# ARGV: dedupe_ttl, then (id, dedupe member, message) triples
_REPLAY_LUA = NOW_LUA + DELIVERED_FN + _DLQ_REMOVE_FN + """
local K_QUEUE = KEYS[4]
""" + PUSH_FN + """
local out = {}
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local id, member, msg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    table.insert(out, 'missing')
  elseif was_delivered(KEYS[5], member, now, ttl) then
    remove(id)
    table.insert(out, 'skipped')
  else
    push_message(msg)
    remove(id)
    table.insert(out, 'replayed')
  end
end
return out
"""

# Delete the given ids. KEYS: dlq hash, dlq index, reason prefix
_DLQ_DELETE_LUA = _DLQ_REMOVE_FN + """
local n = 0
for _, id in ipairs(ARGV) do n = n + remove(id) end
return n
"""

# Retention: delete up to ARGV[2] entries dead-lettered before ARGV[1].
_DLQ_EXPIRE_LUA = _DLQ_REMOVE_FN + """
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(old) do
  if remove(id) == 0 then redis.call('ZREM', KEYS[2], id) end
end
return #old
"""

DLQ_REASONS = ("rejected", "exhausted", "expired", "malformed")


def connect(redis_url: str, *, timeout: float | None = None, retries: int = 1,
            max_connections: int | None = None) -> redis.Redis:
    """A Redis client; ``timeout`` bounds connect and every command.

    ``max_connections`` raises the pool's limit (redis-py's default is 100)
    for a process with more threads than that.

    ``redis://``, ``unix://`` and ``rediss://`` (TLS; ``ssl_cert_reqs``,
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` query parameters pass
    through to redis-py) go to redis-py as they are. ``sentinel://h1,h2/master/db``
    asks the sentinels for the current master on each (re)connection, so a
    failover needs no new configuration.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A retry after a connection error also re-asks the sentinels.
        "retry": Retry(NoBackoff(), retries),
        "health_check_interval": 30,
        "client_name": "distinct-forwarder",
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    if redis_url.startswith("sentinel://"):
        from redis.sentinel import Sentinel

        from forwarder.config import parse_sentinel_url

        target = parse_sentinel_url(redis_url)
        sentinels = Sentinel(
            list(target.hosts),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
        return sentinels.master_for(target.master, db=target.db, username=target.username,
                                    password=target.password, **options)
    return redis.Redis.from_url(redis_url, **options)


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


def dead_letter_finish(entry: dict[str, Any], now: float, signal: str = "",
                       reason: str = "") -> Finish:
    """The Finish that stores ``entry`` in the dead-letter queue."""
    return Finish(entry["id"], "dead_lettered", json.dumps(entry, separators=(",", ":")),
                  now, signal, reason)


def _minute(now: float) -> int:
    return int(now // 60)


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
        self.delivered_prefix = k(C.DELIVERED_PREFIX)
        self.inflight_prefix = k(C.INFLIGHT_PREFIX)
        self.stats_prefix = k(C.STATS_PREFIX)
        self._breaker_keys = [k(C.BREAKER), k(C.BREAKER_PROBE), k(C.BREAKER_RELEASED)]
        self._dlq_keys = [self.dlq_key, self.dlq_index_key, self.dlq_reason_prefix]
        self.taken_key = k(C.TAKEN)
        self._taken_keys = [self.queue_key, self.taken_key, k(C.TAKEN_PREFIX)]
        self.fetchers_key = k(C.FETCHERS)
        self.fetch_prefix = k(C.FETCH_PREFIX)
        self._take = client.register_script(TAKE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._restore_taken = client.register_script(RESTORE_TAKEN_LUA)
        self._rescue = client.register_script(RESCUE_LUA)
        self._promote = client.register_script(PROMOTE_LUA)
        self._finish_script = client.register_script(_FINISH_LUA)
        self._is_delivered = client.register_script(IS_DELIVERED_LUA)
        self._replay = client.register_script(_REPLAY_LUA)
        self._dlq_delete = client.register_script(_DLQ_DELETE_LUA)
        self._dlq_expire = client.register_script(_DLQ_EXPIRE_LUA)

    # --- queue -------------------------------------------------------------
    def enqueue(self, messages: Sequence[str]) -> None:
        """Append messages to the queue: one LPUSH, one round trip."""
        if messages:
            self.client.lpush(self.queue_key, *messages)

    def take(self, limit: int, events: int | None = None,
             hold: float = C.VISIBILITY_TIMEOUT_SECONDS) -> tuple[str, list[str]]:
        """Take up to ``limit`` messages (and about ``events`` events) into a taken batch.

        Returns the batch id and the messages. Until :meth:`release` drops the
        batch, its messages come back to the queue ``hold`` seconds from now
        (:meth:`restore_taken`), so a worker dying mid-batch loses nothing.
        """
        batch = uuid.uuid4().hex
        messages = self._take(keys=self._taken_keys,
                              args=[batch, limit, hold, limit if events is None else events])
        return batch, [_text(m) for m in messages]

    def release(self, batch: str, hand_back: Sequence[str] = ()) -> None:
        """A taken batch is done; queue ``hand_back`` (unsent events) in the same step."""
        self._release(keys=self._taken_keys, args=[batch, *hand_back])

    def restore_taken(self, limit: int = C.PROMOTE_BATCH) -> int:
        """Queue again the messages of taken batches past their deadline."""
        return int(self._restore_taken(keys=self._taken_keys, args=[limit]))

    def taken_depth(self) -> int:
        """How many taken batches are being delivered (or wait to come back)."""
        return int(self.client.zcard(self.taken_key))

    # --- fetch lists (forwarder/fetching.py) ----------------------------------
    def fetchers(self) -> list[tuple[str, float]]:
        """Every registered fetch list and its worker's last sign of life."""
        entries = cast(list[tuple[bytes, float]],
                       self.client.zrange(self.fetchers_key, 0, -1, withscores=True))
        return [(_text(key), float(seen)) for key, seen in entries]

    def fetching(self, fetch_list: str) -> list[str]:
        """The messages in one fetch list (normally none)."""
        return [_text(m) for m in self.client.lrange(fetch_list, 0, -1)]

    def fetching_depth(self) -> int:
        """Messages in every fetch list: fetched, not yet recorded by kombu."""
        keys = [key for key, _ in self.fetchers()]
        if not keys:
            return 0
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())

    def rescue(self, fetch_list: str, messages: Sequence[str]) -> int:
        """Queue again ``messages`` if they are still in ``fetch_list``; returns how many."""
        if not messages:
            return 0
        return int(self._rescue(keys=[self.queue_key, fetch_list], args=list(messages)))

    def forget_fetcher(self, fetch_list: str, silent_since: float) -> bool:
        """Drop a fetch list's entry if it is empty and silent since ``silent_since``."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(fetch_list)
            pipe.zscore(self.fetchers_key, fetch_list)
            depth, seen = pipe.execute()
        if depth or seen is None or float(seen) > silent_since:
            return False
        return bool(self.client.zrem(self.fetchers_key, fetch_list))

    def queue_depth(self) -> int:
        return int(self.client.llen(self.queue_key))

    def oldest_queued(self) -> str | None:
        """The message at the consuming end of the queue (the next one out)."""
        raw = self.client.lindex(self.queue_key, -1)
        return _text(raw) if raw is not None else None

    # --- retry set -----------------------------------------------------------
    def promote_due(self, now: float, limit: int = C.PROMOTE_BATCH) -> int:
        """Move retries due by ``now`` back to the queue; returns how many.

        The shared circuit breaker decides how many may go: none while it is
        open (one probe candidate once its cooldown is over), a doubling
        share right after it closes, then ``limit``.
        """
        return int(self._promote(
            keys=[self.retry_key, self.queue_key, *self._breaker_keys],
            args=[now, limit, C.RAMP_START, C.RAMP_STEP_SECONDS],
        ))

    def retry_depth(self) -> int:
        return int(self.client.zcard(self.retry_key))

    def next_retry_due(self) -> float | None:
        first = self.client.zrange(self.retry_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def first_retry(self) -> str | None:
        first = self.client.zrange(self.retry_key, 0, 0)
        return _text(first[0]) if first else None

    # --- outcomes: one Lua call per chunk, with the breaker's updates ---------
    def finish_many(self, token: str | None, items: Sequence[Finish], now: float,
                    breaker: Breaker | None = None) -> list[str]:
        """Record outcomes atomically, in order; returns the breaker's changes."""
        if not items:
            return []
        keys = [self.inflight_prefix, self.stats_prefix + str(_minute(now)),
                self.delivered_prefix, self.retry_key, self.dlq_key, self.dlq_index_key,
                self.dlq_reason_prefix]
        args: list[Any] = [token or ""]
        if breaker is not None:
            keys += breaker[0]
            args += breaker[1]
        else:
            args += [""] * 6
        for item in items:
            args += [item.event_id, item.outcome, item.payload, repr(item.score), item.signal,
                     item.reason]
        return [_text(c) for c in self._finish_script(keys=keys, args=args)]

    def mark_delivered(self, event_id: str, token: str | None, ttl: float, now: float) -> None:
        self.finish_many(token, [Finish(event_id, "delivered", dedupe_member(event_id), ttl)],
                         now)

    def schedule_retry(self, event_id: str, token: str | None, message: str, due: float,
                       now: float, outcome: FinishOutcome = "retried") -> None:
        self.finish_many(token, [Finish(event_id, outcome, message, due)], now)

    def dead_letter(self, entry: dict[str, Any], token: str | None, now: float) -> None:
        self.finish_many(token, [dead_letter_finish(entry, now)], now)

    def is_delivered(self, event_id: str) -> bool:
        """Whether Distinct accepted this id within the dedupe window."""
        return bool(self._is_delivered(keys=[self.delivered_prefix],
                                       args=[dedupe_member(event_id), self.dedupe_ttl]))

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
            n = int(self._dlq_expire(keys=self._dlq_keys, args=[now - ttl, batch]))
            removed += n
            if n < batch:
                return removed

    def dlq_ids(self, since: float | None = None, until: float | None = None,
                reason: str | None = None) -> list[str]:
        """Dead-letter ids, oldest first, optionally by time and reason."""
        key = self.dlq_reason_prefix + reason if reason else self.dlq_index_key
        low = "-inf" if since is None else since
        high = "+inf" if until is None else until
        return [_text(i) for i in self.client.zrangebyscore(key, low, high)]

    def dlq_get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)
        if not ids:
            return []
        raw = self.client.hmget(self.dlq_key, ids)
        return [json.loads(r) if r is not None else None for r in raw]

    def dlq_put(self, entries: Sequence[dict[str, Any]]) -> None:
        """Store entries as they are (``dlq import``); an existing id is replaced."""
        # Drop replaced entries first, so no stale reason index keeps their ids.
        self.dlq_delete([entry["id"] for entry in entries])
        with self.client.pipeline(transaction=True) as pipe:
            for entry in entries:
                dead_at = float(entry.get("dead_at") or time.time())
                pipe.hset(self.dlq_key, entry["id"], json.dumps(entry, separators=(",", ":")))
                pipe.zadd(self.dlq_index_key, {entry["id"]: dead_at})
                pipe.zadd(self.dlq_reason_prefix + str(entry["reason"]), {entry["id"]: dead_at})
            pipe.execute()

    def dlq_replay(self, pairs: Sequence[tuple[str, str]]) -> list[ReplayState]:
        """Push each (id, message) back to the queue and drop its entry, atomically."""
        if not pairs:
            return []
        args: list[Any] = [self.dedupe_ttl]
        for event_id, message in pairs:
            args += [event_id, dedupe_member(event_id), message]
        states = self._replay(keys=[*self._dlq_keys, self.queue_key, self.delivered_prefix],
                              args=args)
        return [cast(ReplayState, _text(s)) for s in states]

    def dlq_delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(self._dlq_delete(keys=self._dlq_keys, args=list(ids)))

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
                totals[_text(name)] = totals.get(_text(name), 0) + int(count)
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


