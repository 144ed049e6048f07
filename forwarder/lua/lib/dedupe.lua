-- The dedupe window: ids Distinct accepted, one set per 6 hours of delivery
-- (`prefix .. n`, n = floor(t / 21600)), each set expiring `ttl` after its last
-- 6 hours, so an id is remembered ttl to ttl + 6 h after its delivery. Any id
-- may come back with any first_seen (an idempotency key re-sent a day later,
-- a replay), so a lookup must see the whole window: 5 sets for 24 h, each
-- looked up for a whole chunk of ids with one SMISMEMBER. Each id lookup is a
-- probe into a large hash table, the bulk of what admitting an event costs
-- Redis: 6-hour sets need 5 where hourly ones needed 25, for the same 16 bytes
-- per id (benchmarks/redis_cost.py). member: 16 bytes for a UUID id
-- (forwarder.store.dedupe_member).
--
-- 0.1 kept one set per hour (`legacy_prefix .. hour`): while any of those is
-- left (ttl + 1 h after the last 0.1 worker stopped), lookups also walk them.
-- Whether any is left is one EXISTS of all of them (legacy_dedupe_left); a
-- worker asks it once a minute rather than per chunk. Remove in 0.3.

local DEDUPE_SPAN_SECONDS = 21600

-- legacy_dedupe_keys(legacy_prefix, t, ttl): 0.1's sets that may hold ids of
-- the window at time t.
local function legacy_dedupe_keys(legacy_prefix, t, ttl)
  local hour, keys = math.floor(t / 3600), {}
  for h = hour - math.ceil(ttl / 3600), hour do keys[#keys + 1] = legacy_prefix .. decimal(h) end
  return keys
end

-- legacy_dedupe_left(legacy_prefix, t, ttl): whether any of those is left.
local function legacy_dedupe_left(legacy_prefix, t, ttl)
  return redis.call('EXISTS', unpack(legacy_dedupe_keys(legacy_prefix, t, ttl))) > 0
end

-- delivered_among(prefix, legacy_prefix, members, t, ttl, legacy): one boolean
-- per member, true if that id is in the window at time t. legacy: look
-- through 0.1's sets too ('auto': if any is left; false: they are known gone).
local function delivered_among(prefix, legacy_prefix, members, t, ttl, legacy)
  local found = {}
  for i = 1, #members do found[i] = false end
  if #members == 0 then return found end
  local function look_in(key)
    local flags = redis.call('SMISMEMBER', key, unpack(members))
    for i = 1, #members do
      if flags[i] == 1 then found[i] = true end
    end
  end
  local span = math.floor(t / DEDUPE_SPAN_SECONDS)
  for n = span - math.ceil(ttl / DEDUPE_SPAN_SECONDS), span do look_in(prefix .. decimal(n)) end
  if legacy == 'auto' then legacy = legacy_dedupe_left(legacy_prefix, t, ttl) end
  if legacy then
    for _, key in ipairs(legacy_dedupe_keys(legacy_prefix, t, ttl)) do look_in(key) end
  end
  return found
end

-- remember_delivered(prefix, members, t, ttl, expire): add the ids to the
-- current set, in one SADD; expire: (re)set its time to live too, as the
-- caller must whenever the set may be new (finish.lua: once a minute).
local function remember_delivered(prefix, members, t, ttl, expire)
  if #members == 0 then return end
  local span = math.floor(t / DEDUPE_SPAN_SECONDS)
  local key = prefix .. decimal(span)
  redis.call('SADD', key, unpack(members))
  if expire then
    redis.call('EXPIREAT', key, decimal((span + 1) * DEDUPE_SPAN_SECONDS + math.ceil(ttl)))
  end
end
