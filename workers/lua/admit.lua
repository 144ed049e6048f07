-- admit: what may be sent of a chunk of events, decided in order, each as if
-- alone. Per event (`events` holds id, dedupe member pairs) the reply is one of:
--   {'delivered'}            in the dedupe window: never send it again
--   {'busy'}                 another worker holds its claim
--   {'open', wait}           the breaker is open: park it for `wait` seconds
--   {'wait', wait}           no rate-limit slot within `max_wait` seconds
--   {'claimed', wait, probe} send it after `wait` s (its reserved rate slot);
--                            probe = 1 for the half-open breaker's one probe
-- Once one event is refused for the breaker or the rate, every later one gets
-- the same answer; once one holds the probe, the rest wait for its verdict.
--! KEYS delivered_prefix inflight_prefix breaker probe rate
--! ARGV token claim_ms rate_per_s max_wait dedupe_ttl
--! ARGV* events
--! include lib/now.lua
--! include lib/dedupe.lua
local t = now()
local claim_for, per_second = tonumber(claim_ms), tonumber(rate_per_s)
local longest_wait, ttl = tonumber(max_wait), tonumber(dedupe_ttl)
local out = {}
local blocked = nil
local tat = nil
for i = 1, #events, 2 do
  local claim = inflight_prefix .. events[i]
  local reply = nil
  if was_delivered(delivered_prefix, events[i + 1], t, ttl) then reply = {'delivered'}
  elseif redis.call('EXISTS', claim) == 1 then reply = {'busy'}
  elseif blocked then reply = blocked
  else
    local is_probe = 0
    if redis.call('HGET', breaker, 'state') == 'open' then
      local open_until = tonumber(redis.call('HGET', breaker, 'open_until') or '0')
      if t < open_until then
        blocked = {'open', tostring(open_until - t)}
      elseif not redis.call('SET', probe, token, 'NX', 'PX', claim_for) then
        blocked = {'open', '1'}
      else
        is_probe = 1
      end
    end
    local wait = 0
    if not blocked and per_second > 0 then
      if not tat then tat = tonumber(redis.call('GET', rate) or '0') end
      if tat < t then tat = t end
      wait = tat - t
      if wait > longest_wait then
        if is_probe == 1 then redis.call('DEL', probe) end
        blocked = {'wait', tostring(wait)}
      else
        tat = tat + 1 / per_second
        redis.call('SET', rate, tostring(tat), 'PX', math.ceil((tat - t) * 1000) + 1000)
      end
    end
    if blocked then
      reply = blocked
    else
      redis.call('SET', claim, token, 'PX', claim_for)
      reply = {'claimed', tostring(wait), is_probe}
      if is_probe == 1 then blocked = {'open', '1'} end
    end
  end
  out[#out + 1] = reply
end
return out
