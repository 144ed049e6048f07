"""The gate every POST to Distinct passes, shared by all workers through Redis.

One Lua call (``admit``) answers, for one event about to be sent:

- ``delivered``: the id is in the dedupe window; do not send it again.
- ``busy``: another worker holds the event's in-flight claim.
- ``open``: the circuit breaker is open; park the event until ``until``
  without burning an attempt.
- ``wait``: the global rate limit has no slot within the next second.
- ``claimed``: send it, after sleeping ``wait`` seconds (a reserved rate
  slot); ``probe`` says this request is the half-open breaker's probe.

After the POST, ``record`` (in the same transaction that stores the
outcome) feeds the breaker: consecutive transient failures, or a failure
ratio over a sliding window, open it; a failed probe reopens it with a
doubled cooldown; a successful one closes it.

Every time comparison inside the scripts uses Redis's own clock (``TIME``),
so workers on hosts with skewed clocks agree on the breaker and the rate.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import redis

from forwarder import constants as C
from forwarder.fetching import PUSH_FN

AdmitState = Literal["delivered", "busy", "open", "wait", "claimed"]
#: ok: Distinct answered (delivered or rejected an event). fail: transient
#: failure. auth: 401/403 or another deployment problem.
Signal = Literal["ok", "fail", "auth"]

NOW_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# Dedupe memory: one set per hour of delivered ids. A member is looked for in
# every hour the window touches, so the window is dedupe_ttl to dedupe_ttl + 1 h.
DELIVERED_FN = """
local function was_delivered(prefix, member, now, ttl)
  local hour = math.floor(now / 3600)
  for h = hour - math.ceil(ttl / 3600), hour do
    if redis.call('SISMEMBER', prefix .. h, member) == 1 then return true end
  end
  return false
end
"""

# Admit events in order, each as if alone: once one is refused for the
# breaker or the rate, every later one gets the same answer; once one holds
# the half-open breaker's probe, the rest wait for its verdict.
# KEYS: delivered prefix, inflight prefix, breaker, probe, rate
# ARGV: token, claim_ttl_ms, rate_per_s (0 = none), max_wait_s, dedupe_ttl,
#       then (id, dedupe member) pairs
_ADMIT_LUA = NOW_LUA + DELIVERED_FN + """
local token, claim_ms, rate, max_wait = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local out = {}
local blocked = nil
local tat = nil
for i = 6, #ARGV, 2 do
  local inflight = KEYS[2] .. ARGV[i]
  local reply = nil
  if was_delivered(KEYS[1], ARGV[i + 1], now, ttl) then reply = {'delivered'}
  elseif redis.call('EXISTS', inflight) == 1 then reply = {'busy'}
  elseif blocked then reply = blocked
  else
    local probe = 0
    if redis.call('HGET', KEYS[3], 'state') == 'open' then
      local open_until = tonumber(redis.call('HGET', KEYS[3], 'open_until') or '0')
      if now < open_until then
        blocked = {'open', tostring(open_until)}
      elseif not redis.call('SET', KEYS[4], token, 'NX', 'PX', claim_ms) then
        blocked = {'open', tostring(now + 1)}
      else
        probe = 1
      end
    end
    local wait = 0
    if not blocked and rate > 0 then
      if not tat then tat = tonumber(redis.call('GET', KEYS[5]) or '0') end
      if tat < now then tat = now end
      wait = tat - now
      if wait > max_wait then
        if probe == 1 then redis.call('DEL', KEYS[4]) end
        blocked = {'wait', tostring(wait)}
      else
        tat = tat + 1 / rate
        redis.call('SET', KEYS[5], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
      end
    end
    if blocked then
      reply = blocked
    else
      redis.call('SET', inflight, token, 'PX', claim_ms)
      reply = {'claimed', tostring(wait), probe}
      if probe == 1 then blocked = {'open', tostring(now + 1)} end
    end
  end
  out[#out + 1] = reply
end
return out
"""

# KEYS: delivered prefix; ARGV: member, dedupe_ttl
IS_DELIVERED_LUA = NOW_LUA + DELIVERED_FN + """
if was_delivered(KEYS[1], ARGV[1], now, tonumber(ARGV[2])) then return 1 end
return 0
"""


def dedupe_member(event_id: str) -> bytes:
    """The compact form of an id in the dedupe sets: 16 bytes for a UUID."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        return b"s:" + event_id.encode("utf-8", "surrogatepass")
    if str(parsed) != event_id:
        return b"s:" + event_id.encode("utf-8", "surrogatepass")
    return parsed.bytes


# The breaker's update after one answer (or failure), as a Lua function so the
# outcome scripts of forwarder/store.py run it in the same atomic step.
# K: breaker, probe, window prefix
# A: signal, token, consecutive_limit, min_requests, ratio, window_s,
#    cooldown_min, cooldown_max, reason
# Returns 'opened', 'reopened', 'closed' or ''.
BREAKER_FN = """
local function breaker_record(K, A)
  local signal = A[1]
  local bucket_size = tonumber(A[6]) / 10
  local bucket = math.floor(now / bucket_size)
  local wkey = K[3] .. bucket
  local state = redis.call('HGET', K[1], 'state') or 'closed'
  local is_probe = redis.call('GET', K[2]) == A[2]
  if signal == 'ok' then
    redis.call('HINCRBY', wkey, 'ok', 1)
    redis.call('EXPIRE', wkey, math.ceil(tonumber(A[6]) * 2))
    redis.call('HSET', K[1], 'consecutive', 0)
    if state == 'open' then
      redis.call('HSET', K[1], 'state', 'closed', 'closed_at', tostring(now), 'cooldown', 0,
                 'reason', '')
      redis.call('DEL', K[2])
      return 'closed'
    end
    return ''
  end
  redis.call('HINCRBY', wkey, 'fail', 1)
  redis.call('EXPIRE', wkey, math.ceil(tonumber(A[6]) * 2))
  local consecutive = redis.call('HINCRBY', K[1], 'consecutive', 1)
  local cd_min, cd_max = tonumber(A[7]), tonumber(A[8])
  if state == 'open' then
    if not is_probe then return '' end  -- a request sent before the breaker opened
    local cooldown = tonumber(redis.call('HGET', K[1], 'cooldown') or '0') * 2
    if cooldown < cd_min then cooldown = cd_min end
    if cooldown > cd_max then cooldown = cd_max end
    redis.call('HSET', K[1], 'cooldown', tostring(cooldown),
               'open_until', tostring(now + cooldown), 'reason', A[9])
    redis.call('DEL', K[2])
    return 'reopened'
  end
  local trip = signal == 'auth' or consecutive >= tonumber(A[3])
  if not trip then
    local ok, fail = 0, 0
    for b = bucket - 9, bucket do
      local counts = redis.call('HMGET', K[3] .. b, 'ok', 'fail')
      ok = ok + tonumber(counts[1] or '0')
      fail = fail + tonumber(counts[2] or '0')
    end
    trip = ok + fail >= tonumber(A[4]) and fail / (ok + fail) >= tonumber(A[5])
  end
  if trip then
    redis.call('HSET', K[1], 'state', 'open', 'reason', A[9], 'opened_at', tostring(now),
               'cooldown', tostring(cd_min), 'open_until', tostring(now + cd_min))
    redis.call('HINCRBY', K[1], 'opened_count', 1)
    return 'opened'
  end
  return ''
end
"""

_RECORD_LUA = NOW_LUA + BREAKER_FN + "return breaker_record(KEYS, ARGV)\n"

# Move due retries back to the queue, respecting the breaker:
# open -> nothing, except one event to serve as the probe once the cooldown
# is over; just closed -> a limit that doubles every ramp step, so a backlog
# is released in steps; then the full batch.
# KEYS: retry, queue, breaker, probe, released-marker
# ARGV: now (worker clock, compared with due scores), limit, ramp_start, ramp_step_s
PROMOTE_LUA = NOW_LUA + """
local K_QUEUE = KEYS[2]
""" + PUSH_FN + """
local limit = tonumber(ARGV[2])
local breaker = redis.call('HMGET', KEYS[3], 'state', 'open_until', 'closed_at')
if breaker[1] == 'open' then
  if now < tonumber(breaker[2] or '0') or redis.call('EXISTS', KEYS[4]) == 1
     or redis.call('EXISTS', KEYS[5]) == 1 then
    return 0
  end
  limit = 1
  redis.call('SET', KEYS[5], '1', 'PX', 2000)
elseif breaker[3] then
  local since = now - tonumber(breaker[3])
  local ramp = tonumber(ARGV[3]) * math.pow(2, math.floor(since / tonumber(ARGV[4])))
  if ramp < limit then limit = math.floor(ramp) end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, msg in ipairs(due) do
  push_message(msg)
  redis.call('ZREM', KEYS[1], msg)
end
return #due
"""


@dataclass(frozen=True)
class BreakerPolicy:
    """When the shared circuit breaker opens and how long it stays open."""

    consecutive: int = C.DEFAULT_BREAKER_CONSECUTIVE
    min_requests: int = C.DEFAULT_BREAKER_MIN_REQUESTS
    ratio: float = C.DEFAULT_BREAKER_RATIO
    window: float = C.DEFAULT_BREAKER_WINDOW
    cooldown_min: float = C.DEFAULT_BREAKER_COOLDOWN_MIN
    cooldown_max: float = C.DEFAULT_BREAKER_COOLDOWN_MAX


@dataclass(frozen=True)
class Admission:
    state: AdmitState
    wait: float = 0.0
    until: float = 0.0
    probe: bool = False


@dataclass(frozen=True)
class BreakerState:
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


class Gate:
    """Dedupe, in-flight claims, circuit breaker and rate limit for one namespace."""

    def __init__(self, client: redis.Redis, namespace: str, policy: BreakerPolicy | None = None,
                 rate_limit: float | None = None, dedupe_ttl: float = C.DEFAULT_DEDUPE_TTL):
        self.client = client
        self.dedupe_ttl = dedupe_ttl
        self.policy = policy or BreakerPolicy()
        self.rate_limit = rate_limit or 0.0
        k = lambda name: C.key(namespace, name)  # noqa: E731
        self.delivered_prefix = k(C.DELIVERED_PREFIX)
        self.inflight_prefix = k(C.INFLIGHT_PREFIX)
        self.breaker_key = k(C.BREAKER)
        self.probe_key = k(C.BREAKER_PROBE)
        self.window_prefix = k(C.BREAKER_WINDOW_PREFIX)
        self.released_key = k(C.BREAKER_RELEASED)
        self.rate_key = k(C.RATE)
        self._admit = client.register_script(_ADMIT_LUA)
        self._record = client.register_script(_RECORD_LUA)

    def admit(self, event_id: str, token: str, claim_ttl: float) -> Admission:
        return self.admit_many([event_id], token, claim_ttl)[0]

    def admit_many(self, event_ids: list[str], token: str,
                   claim_ttl: float) -> list[Admission]:
        """One Lua call deciding, in order, what may be sent of ``event_ids``."""
        args: list[Any] = [token, max(1, int(claim_ttl * 1000)), self.rate_limit,
                           C.RATE_MAX_WAIT, self.dedupe_ttl]
        for event_id in event_ids:
            args += [event_id, dedupe_member(event_id)]
        replies = self._admit(
            keys=[self.delivered_prefix, self.inflight_prefix, self.breaker_key,
                  self.probe_key, self.rate_key],
            args=args,
        )
        return [_admission(reply) for reply in replies]

    @property
    def breaker_keys(self) -> list[str]:
        return [self.breaker_key, self.probe_key, self.window_prefix]

    def breaker_policy_args(self) -> list[Any]:
        p = self.policy
        return [p.consecutive, p.min_requests, p.ratio, p.window, p.cooldown_min,
                p.cooldown_max]

    def breaker_args(self, signal: Signal, token: str | None, reason: str) -> list[Any]:
        return [signal, token or "", *self.breaker_policy_args(), reason]

    def record(self, signal: Signal, token: str | None, reason: str, pipe: Any) -> None:
        """Queue only the breaker's update on ``pipe`` (outcomes use Store.finish)."""
        self._record(keys=self.breaker_keys, args=self.breaker_args(signal, token, reason),
                     client=pipe)

    def state(self) -> BreakerState:
        raw = {_text(k): _text(v) for k, v in self.client.hgetall(self.breaker_key).items()}
        is_open = raw.get("state") == "open"
        return BreakerState(
            state="open" if is_open else "closed",
            reason=raw.get("reason", "") if is_open else "",
            open_until=float(raw["open_until"]) if is_open and "open_until" in raw else None,
            cooldown=float(raw.get("cooldown") or 0),
            opened_count=int(raw.get("opened_count") or 0),
        )


def _admission(reply: list[Any]) -> Admission:
    state = _text(reply[0])
    if state == "open":
        return Admission("open", until=float(_text(reply[1])))
    if state == "wait":
        return Admission("wait", wait=float(_text(reply[1])))
    if state == "claimed":
        return Admission("claimed", wait=float(_text(reply[1])), probe=bool(int(reply[2])))
    return Admission(state)  # type: ignore[arg-type]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
