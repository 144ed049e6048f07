-- requeue_worker: everything worker W holds goes back onto the queue, and W is
-- forgotten. Run by any live worker once W's heartbeat is older than
-- `silent_for` seconds (W died: kill -9, OOM), checked here atomically, and by
-- W itself as it exits (`silent_for` empty). W's claims on those events and on
-- the breaker's probe are released too, so they are sent again now rather
-- than when the claims expire. Returns how many events were requeued, or -1
-- if W is alive after all.
--! KEYS workers worker_info held landing queue claims claim_tokens legacy_claim_prefix probe
--! ARGV worker silent_for
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/requeue.lua
--! include lib/claims.lua
local t = now()
if silent_for ~= '' then
  local beat = redis.call('ZSCORE', workers, worker)
  if beat and t - tonumber(beat) < tonumber(silent_for) then return -1 end
end
local n = 0
for _, item in ipairs(redis.call('LRANGE', landing, 0, -1)) do
  requeue(queue, item)
  n = n + 1
end
local ids = {}
for _, item in ipairs(redis.call('HVALS', held)) do
  requeue(queue, item)
  n = n + 1
  local ok, event = pcall(cjson.decode, item)
  if ok and type(event) == 'table' and type(event['id']) == 'string' then
    ids[#ids + 1] = event['id']
  end
end
-- W's chunks (its live tokens), and the claims of each.
local live = redis.call('ZRANGEBYSCORE', claim_tokens, '(' .. micros(t), '+inf')
for _, token in ipairs(live) do
  if claim_owned(token, worker) then release_claims(claims, claim_tokens, token) end
end
-- 0.1's claims, in case W took some while a 0.1 worker was registered.
for start = 1, #ids, 500 do
  local part = {unpack(ids, start, math.min(start + 499, #ids))}
  local keys = legacy_claim_keys(legacy_claim_prefix, part)
  local holders = redis.call('MGET', unpack(keys))
  for i, key in ipairs(keys) do
    if claim_owned(holders[i], worker) then redis.call('DEL', key) end
  end
end
if claim_owned(redis.call('GET', probe), worker) then redis.call('DEL', probe) end
redis.call('DEL', held, landing, worker_info)
redis.call('ZREM', workers, worker)
return n
