-- requeue_worker: everything worker W holds goes back onto the queue, and W is
-- forgotten. Run by any live worker once W's heartbeat is older than
-- `silent_for` seconds (W died: kill -9, OOM), checked here atomically, and by
-- W itself as it exits (`silent_for` empty). W's claims on those events and on
-- the breaker's probe are released too, so they are sent again now rather
-- than when the claims expire. Returns how many events were requeued, or -1
-- if W is alive after all.
--! KEYS workers worker_info held landing queue inflight_prefix probe
--! ARGV worker silent_for
--! include lib/now.lua
--! include lib/requeue.lua
if silent_for ~= '' then
  local beat = redis.call('ZSCORE', workers, worker)
  if beat and now() - tonumber(beat) < tonumber(silent_for) then return -1 end
end
local mine = worker .. '|'
local function release(claim)
  local holder = redis.call('GET', claim)
  if holder and string.sub(holder, 1, #mine) == mine then redis.call('DEL', claim) end
end
local n = 0
for _, item in ipairs(redis.call('LRANGE', landing, 0, -1)) do
  requeue(queue, item)
  n = n + 1
end
for _, item in ipairs(redis.call('HVALS', held)) do
  requeue(queue, item)
  n = n + 1
  local ok, event = pcall(cjson.decode, item)
  if ok and type(event) == 'table' and type(event['id']) == 'string' then
    release(inflight_prefix .. event['id'])
  end
end
release(probe)
redis.call('DEL', held, landing, worker_info)
redis.call('ZREM', workers, worker)
return n
