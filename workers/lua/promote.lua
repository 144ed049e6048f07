-- promote: retries that are due (on Redis's clock) back onto the queue, as the
-- shared breaker allows: none while it is open, except one event to serve as
-- its probe once the cooldown is over; right after it closes, a limit that
-- doubles every `ramp_step` seconds from `ramp_start`, so a backlog is
-- released in steps; then `limit`. Returns how many moved.
--! KEYS retry queue breaker probe released
--! ARGV limit ramp_start ramp_step
--! include lib/now.lua
--! include lib/requeue.lua
local t = now()
local n = tonumber(limit)
local state = redis.call('HMGET', breaker, 'state', 'open_until', 'closed_at')
if state[1] == 'open' then
  if t < tonumber(state[2] or '0') or redis.call('EXISTS', probe) == 1
     or redis.call('EXISTS', released) == 1 then
    return 0
  end
  n = 1
  redis.call('SET', released, '1', 'PX', 2000)
elseif state[3] then
  local steps = math.floor((t - tonumber(state[3])) / tonumber(ramp_step))
  local ramp = tonumber(ramp_start) * math.pow(2, math.min(steps, 30))
  if ramp < n then n = math.floor(ramp) end
end
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', t, 'LIMIT', 0, n)
for _, item in ipairs(due) do
  requeue(queue, item)
  redis.call('ZREM', retry, item)
end
return #due
