-- Claims: which worker may POST an event id right now. Two sorted sets:
--   claims        event id, scored by when its claim expires (integer
--                 microseconds on Redis's clock)
--   claim_tokens  each admitted chunk's token ("<worker>|<random>"), scored by
--                 the expiry that chunk gave its claims, unique among live tokens
-- A claim belongs to the chunk whose token has its score. A chunk's claims are
-- read with one ZMSCORE, taken with one ZADD, and released together with one
-- ZREMRANGEBYSCORE when its last outcome is stored, where a string per id
-- with its own expiry cost a SET and a DEL per event (a command run from Lua
-- costs Redis several times a lookup, and a score read back is a printf:
-- benchmarks/redis_cost.py). An event's claim may so outlive its own outcome
-- by the rest of its chunk, which is harmless: a delivered id is refused by
-- the dedupe window before its claim is looked at, a failure ends the chunk,
-- and a copy of a retried or dead-lettered event admitted meanwhile is 'busy'
-- and comes back a little later. An expired claim is free whether or not it
-- is still there; expire_claims.lua removes those, and expired tokens, from
-- each worker's heartbeat sweep. requeue_worker.lua releases a dead worker's
-- claims at once, by its tokens.
--
-- 0.1 kept a string per id (`legacy_prefix .. id` -> token, with PX). While a
-- 0.1 worker is registered (workers/gate.py: Legacy), claims are also taken,
-- read and released there, event by event, so old and new workers respect
-- each other's claims during a rolling upgrade. Remove in 0.3.

-- micros(t): seconds as integer microseconds, as a score.
local function micros(t)
  return decimal(math.floor(t * 1000000))
end

-- claims_expire(claims, claim_tokens, t): drop the claims and tokens expired
-- at t; returns how many claims.
local function claims_expire(claims, claim_tokens, t)
  local now_us = micros(t)
  redis.call('ZREMRANGEBYSCORE', claim_tokens, '-inf', now_us)
  return redis.call('ZREMRANGEBYSCORE', claims, '-inf', now_us)
end

-- claim_live(score, t): whether a claim (or token) scored `score` holds at t.
local function claim_live(score, t)
  return score and tonumber(score) > t * 1000000
end

-- claim_score(claim_tokens, token, t, claim_ms): the score of token's claims:
-- its live one if it has claimed before, else a new one, claim_ms from t and
-- no other live token's.
local function claim_score(claim_tokens, token, t, claim_ms)
  local score = micros(t + tonumber(claim_ms) / 1000)
  while redis.call('ZCOUNT', claim_tokens, score, score) > 0 do
    score = decimal(tonumber(score) + 1)
  end
  if redis.call('ZADD', claim_tokens, 'NX', score, token) == 0 then
    local earlier = redis.call('ZSCORE', claim_tokens, token)
    if claim_live(earlier, t) then return earlier end
    redis.call('ZADD', claim_tokens, score, token)
  end
  return score
end

-- release_claims(claims, claim_tokens, token): release every claim of token's
-- chunk, and forget the token.
local function release_claims(claims, claim_tokens, token)
  local score = redis.call('ZSCORE', claim_tokens, token)
  if score then
    redis.call('ZREMRANGEBYSCORE', claims, score, score)
    redis.call('ZREM', claim_tokens, token)
  end
end

-- legacy_claim_keys(prefix, ids): 0.1's claim key of each id.
local function legacy_claim_keys(prefix, ids)
  local keys = {}
  for i = 1, #ids do keys[i] = prefix .. ids[i] end
  return keys
end

-- claim_owned(value, owner): whether a token (a chunk's, the breaker probe's,
-- or a 0.1 claim's value) belongs to owner: that token, or a worker id for
-- all of that worker's tokens.
local function claim_owned(value, owner)
  return value and (value == owner or string.sub(value, 1, #owner + 1) == owner .. '|')
end
