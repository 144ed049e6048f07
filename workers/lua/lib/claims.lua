-- Claims: which worker may POST an event id right now. One hash, id ->
-- "<token>|<until>" (token: "<worker>|<random>"), so a chunk's claims are read
-- in one HMGET and written in one HSET; a claim past its time is free again
-- (a worker that died with it leaves nothing that blocks the event for long,
-- and requeue_worker.lua releases a dead worker's claims at once).

-- claim_free(value, t): whether a claim's value (false: none) leaves the id free.
local function claim_free(value, t)
  if not value then return true end
  local until_time = tonumber(string.match(value, '|([%d%.]+)$'))
  return until_time == nil or until_time <= t
end

-- claim_owned(value, owner): whether the claim belongs to owner (a token, or a
-- worker id for all of that worker's claims).
local function claim_owned(value, owner)
  return value and string.sub(value, 1, #owner + 1) == owner .. '|'
end
