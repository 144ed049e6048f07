-- admit: what may be sent of a chunk of events, decided in order, each as if
-- alone, in one step. `events` holds (id, dedupe member) pairs. legacy_dedupe:
-- '1' while 0.1's dedupe sets are left; legacy_claims: '1' while a 0.1 worker
-- is registered (workers/gate.py: Legacy). The reply is one string, a line per
-- event (each value crossing out of Lua costs Redis as much as a lookup), each
-- line one of:
--   'delivered'              in the dedupe window: never send it again
--   'busy'                   another chunk holds its claim
--   'open <wait>'            the breaker is open: park it for `wait` seconds
--   'wait <wait>'            no rate-limit slot within `max_wait` seconds
--   'claimed <wait>'         send it after `wait` s (its reserved rate slot)
--   'probe <wait>'           the same, as the half-open breaker's one probe
-- Once one event is refused for the breaker or the rate, every later one gets
-- the same answer; once one holds the probe, the rest wait for its verdict.
-- The chunk costs one SMISMEMBER per set of the dedupe window (5 for 24 h),
-- one ZMSCORE and one ZADD of claims (lib/claims.lua), one read of the
-- breaker and at most one write of the rate.
--! KEYS dedupe_prefix legacy_dedupe_prefix claims claim_tokens legacy_claim_prefix breaker probe rate
--! ARGV token claim_ms rate_per_s max_wait dedupe_ttl legacy_dedupe legacy_claims
--! ARGV* events
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/dedupe.lua
--! include lib/claims.lua
local t = now()
local per_second = tonumber(rate_per_s)
local longest_wait = tonumber(max_wait)
local ids, members = {}, {}
for i = 1, #events, 2 do
  ids[#ids + 1] = events[i]
  members[#members + 1] = events[i + 1]
end
if #ids == 0 then return '' end
local delivered = delivered_among(dedupe_prefix, legacy_dedupe_prefix, members, t,
                                  tonumber(dedupe_ttl), legacy_dedupe == '1')
local holders = redis.call('ZMSCORE', claims, unpack(ids))
for i = 1, #ids do holders[i] = claim_live(holders[i], t) end
local legacy_keys = nil
if legacy_claims == '1' then
  legacy_keys = legacy_claim_keys(legacy_claim_prefix, ids)
  local legacy = redis.call('MGET', unpack(legacy_keys))
  for i = 1, #ids do holders[i] = holders[i] or legacy[i] end
end
local state = redis.call('HMGET', breaker, 'state', 'open_until')
local taken = {}  -- ids claimed earlier in this chunk
local score = nil  -- of this chunk's claims, once it claims one
local claimed = {}  -- ZADD's arguments: score, id, score, id...
local blocked = nil
local tat, tat_changed = nil, false
local out = {}
for i = 1, #ids do
  local reply = nil
  if delivered[i] then reply = 'delivered'
  elseif taken[ids[i]] or holders[i] then reply = 'busy'
  elseif blocked then reply = blocked
  else
    local is_probe = 0
    if state[1] == 'open' then
      local open_until = tonumber(state[2] or '0')
      if t < open_until then
        blocked = 'open ' .. tostring(open_until - t)
      elseif not redis.call('SET', probe, token, 'NX', 'PX', claim_ms) then
        blocked = 'open 1'
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
        blocked = 'wait ' .. tostring(wait)
      else
        tat = tat + 1 / per_second
        tat_changed = true
      end
    end
    if blocked then
      reply = blocked
    else
      score = score or claim_score(claim_tokens, token, t, claim_ms)
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = ids[i]
      if legacy_keys then redis.call('SET', legacy_keys[i], token, 'PX', claim_ms) end
      taken[ids[i]] = true
      -- (a literal: turning a number into a string costs Redis a printf)
      local after = wait == 0 and '0' or tostring(wait)
      if is_probe == 1 then
        reply = 'probe ' .. after
        blocked = 'open 1'
      else
        reply = 'claimed ' .. after
      end
    end
  end
  out[#out + 1] = reply
end
if #claimed > 0 then redis.call('ZADD', claims, unpack(claimed)) end
if tat_changed then
  redis.call('SET', rate, tostring(tat), 'PX', math.ceil((tat - t) * 1000) + 1000)
end
return table.concat(out, '\n')
