-- The dead-letter queue: a hash of entries (id -> JSON), an index by time of
-- death, and one index per reason. Both functions keep the three in step.

-- dlq_remove(hash, index, reason_prefix, id): 1 if an entry was removed.
local function dlq_remove(hash, index, reason_prefix, id)
  local raw = redis.call('HGET', hash, id)
  if not raw then return 0 end
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and type(entry['reason']) == 'string' then
    redis.call('ZREM', reason_prefix .. entry['reason'], id)
  end
  redis.call('HDEL', hash, id)
  redis.call('ZREM', index, id)
  return 1
end

-- dlq_add(hash, index, reason_prefix, id, entry, dead_at, reason): store an
-- entry, replacing any entry with the same id (and its place in the indexes).
local function dlq_add(hash, index, reason_prefix, id, entry, dead_at, reason)
  dlq_remove(hash, index, reason_prefix, id)
  redis.call('HSET', hash, id, entry)
  redis.call('ZADD', index, dead_at, id)
  redis.call('ZADD', reason_prefix .. reason, dead_at, id)
end
