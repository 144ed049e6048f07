-- Claims: which worker may POST an event id right now. One string per id,
-- `prefix .. id` -> "<worker>|<random>" (the chunk's token), set with PX so a
-- claim outlives a worker that died holding it by at most its time; a chunk's
-- claims are read with one MGET and released with one DEL. (A hash of claims
-- would be one key, but Redis keeps a small hash as a list it scans for every
-- field: four times the cost of these keys per event, measured.)
-- requeue_worker.lua releases a dead worker's claims at once.

-- claim_keys(prefix, ids): the claim key of each id.
local function claim_keys(prefix, ids)
  local keys = {}
  for i = 1, #ids do keys[i] = prefix .. ids[i] end
  return keys
end

-- claim_owned(value, owner): whether the claim belongs to owner (a token, or a
-- worker id for all of that worker's claims).
local function claim_owned(value, owner)
  return value and (value == owner or string.sub(value, 1, #owner + 1) == owner .. '|')
end
