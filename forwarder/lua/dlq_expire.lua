-- dlq_expire: retention. Removes up to `limit` entries dead-lettered before
-- `before` (epoch seconds); returns how many index entries it looked at.
--! KEYS dlq dlq_index dlq_reason_prefix
--! ARGV before limit
--! include lib/dlq.lua
local old = redis.call('ZRANGEBYSCORE', dlq_index, '-inf', before, 'LIMIT', 0, tonumber(limit))
for _, id in ipairs(old) do
  if dlq_remove(dlq, dlq_index, dlq_reason_prefix, id) == 0 then
    redis.call('ZREM', dlq_index, id)  -- an index entry without its entry
  end
end
return #old
