-- finish: the outcomes of events worker W holds, in order, in one atomic step.
-- One call carries the outcomes of several delivery threads at once (the
-- worker's group commit, workers/outcomes.py), each thread waiting for it
-- before its next POST. For each event: release its claim if its chunk's
-- token still has it; unless it is only 'released' (unsent, still held), take
-- it out of W's held batch and store the outcome (dedupe entry, retry set with
-- a delay on Redis's clock, or DLQ entry), count it per minute, and feed the
-- breaker. An event no longer held (a sweeper requeued it after W's heartbeat
-- stopped) keeps only a 'delivered' outcome, a fact about Distinct; the copy
-- back in the queue carries everything else. The group's claims are read and
-- released, its ids remembered and its outcomes counted in one command each:
-- what costs Redis is a call and every value crossing into or out of Lua, not
-- an outcome. (Whether an event is still held is HDEL's answer, so its payload
-- never crosses into Lua; deliveries leave it in one HDEL.) Returns the
-- breaker's changes as (position of the outcome that caused it, 'opened',
-- 'reopened' or 'closed') pairs, mostly none.
--! KEYS held claim_prefix stats_prefix dedupe_prefix retry dlq dlq_index dlq_reason_prefix breaker probe window_prefix
--! ARGV dedupe_ttl consecutive min_requests ratio window cooldown_min cooldown_max
--! ARGV* outcomes
--! include lib/now.lua
--! include lib/dlq.lua
--! include lib/claims.lua
--! include lib/dedupe.lua
--! include lib/breaker.lua
-- outcomes: 9 values per event: token, field, id, outcome, payload, score,
-- dlq_reason, signal, breaker_reason. outcome is delivered (payload: dedupe
-- member), retried or deferred (payload: the event; score: delay in seconds),
-- dead_lettered (payload: the entry; score: dead_at), skipped (already
-- delivered: nothing stored) or released.
local t = now()
local policy = {consecutive, min_requests, ratio, window, cooldown_min, cooldown_max}
local n = #outcomes / 9
local ids = {}
for k = 1, n do ids[k] = outcomes[9 * k - 6] end
local holders = redis.call('MGET', unpack(claim_keys(claim_prefix, ids)))
local drop_claims, drop_held, members, counts = {}, {}, {}, {}
local changes = {}
local oks, last_ok = 0, 0
local function flush_oks()
  if oks > 0 then
    local change = breaker_ok(breaker, probe, window_prefix, t, oks, tonumber(window))
    if change ~= '' then changes[#changes + 1] = last_ok; changes[#changes + 1] = change end
    oks = 0
  end
end
for k = 1, n do
  local i = 9 * k - 8
  local token, field, id, outcome, payload, score, dlq_reason, signal, breaker_reason =
    unpack(outcomes, i, i + 8)
  if token ~= '' and claim_owned(holders[k], token) then
    drop_claims[#drop_claims + 1] = claim_prefix .. id
    holders[k] = false
  end
  if outcome == 'released' then
    if token ~= '' and redis.call('GET', probe) == token then redis.call('DEL', probe) end
  else
    -- A delivery is stored whether or not the event is still held (its
    -- fields leave in one HDEL below); the other outcomes only if it is.
    if outcome == 'delivered' then
      drop_held[#drop_held + 1] = field
      members[#members + 1] = payload
      counts.delivered = (counts.delivered or 0) + 1
    elseif redis.call('HDEL', held, field) == 1 then
      if outcome == 'dead_lettered' then
        dlq_add(dlq, dlq_index, dlq_reason_prefix, id, payload, score, dlq_reason)
      elseif outcome ~= 'skipped' then
        redis.call('ZADD', retry, t + tonumber(score), payload)
      end
      counts[outcome] = (counts[outcome] or 0) + 1
    end
  end
  if signal == 'ok' then
    oks, last_ok = oks + 1, k
  elseif signal ~= '' then
    flush_oks()  -- the answers before this failure count first, as they came
    local change = breaker_failure(breaker, probe, window_prefix, t, signal, token, policy,
                                   breaker_reason)
    if change ~= '' then changes[#changes + 1] = k; changes[#changes + 1] = change end
  end
end
flush_oks()
if #drop_claims > 0 then redis.call('DEL', unpack(drop_claims)) end
if #drop_held > 0 then redis.call('HDEL', held, unpack(drop_held)) end
remember_delivered(dedupe_prefix, members, t, tonumber(dedupe_ttl))
local stats = stats_prefix .. math.floor(t / 60)
local counted = false
for outcome, count in pairs(counts) do
  redis.call('HINCRBY', stats, outcome, count)
  counted = true
end
if counted then redis.call('EXPIRE', stats, 7200) end
return changes
