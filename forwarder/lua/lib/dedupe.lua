-- The dedupe window: ids Distinct accepted, one set per hour, a member looked
-- for in every hour the window touches (so the window is ttl to ttl + 1 h).
-- member: 16 bytes for a UUID id (forwarder.store.dedupe_member).

-- was_delivered(prefix, member, t, ttl): whether the id is in the window at time t.
local function was_delivered(prefix, member, t, ttl)
  local hour = math.floor(t / 3600)
  for h = hour - math.ceil(ttl / 3600), hour do
    if redis.call('SISMEMBER', prefix .. h, member) == 1 then return true end
  end
  return false
end

-- remember_delivered(prefix, member, t, ttl): add the id to the current hour.
local function remember_delivered(prefix, member, t, ttl)
  local hour = math.floor(t / 3600)
  redis.call('SADD', prefix .. hour, member)
  redis.call('EXPIREAT', prefix .. hour, (hour + 1) * 3600 + math.ceil(ttl))
end
