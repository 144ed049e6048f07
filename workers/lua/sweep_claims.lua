-- sweep_claims: drop claims past their time (a task cut off by a Redis outage
-- or an unexpected error never released its chunk's claims; they block nothing
-- once past their time, but would stay in the hash). Returns how many it dropped.
--! KEYS claims
--! include lib/now.lua
--! include lib/claims.lua
local t = now()
local all = redis.call('HGETALL', claims)
local stale = {}
for i = 1, #all, 2 do
  if claim_free(all[i + 1], t) then stale[#stale + 1] = all[i] end
end
for start = 1, #stale, 500 do
  redis.call('HDEL', claims, unpack(stale, start, math.min(start + 499, #stale)))
end
return #stale
