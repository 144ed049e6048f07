-- finish: the outcomes of events worker W holds, in order, in one atomic step.
-- For each event: release its claim if this token still has it; unless it is
-- only 'released' (unsent, still held), take it out of W's held batch and store
-- the outcome (dedupe entry, retry set with a delay on Redis's clock, or DLQ
-- entry), count it per minute, and feed the breaker.
-- An event no longer held (a sweeper requeued it after W's heartbeat stopped)
-- keeps only a 'delivered' outcome, a fact about Distinct; the copy back in the
-- queue carries everything else. Returns the breaker's changes ('opened'...).
--! KEYS held inflight_prefix stats_prefix delivered_prefix retry dlq dlq_index dlq_reason_prefix breaker probe window_prefix
--! ARGV token dedupe_ttl consecutive min_requests ratio window cooldown_min cooldown_max
--! ARGV* outcomes
--! include lib/now.lua
--! include lib/dedupe.lua
--! include lib/dlq.lua
--! include lib/breaker.lua
-- outcomes: 8 values per event: field, id, outcome, payload, score,
-- dlq_reason, signal, breaker_reason. outcome is delivered (payload: dedupe
-- member), retried or deferred (payload: the event; score: delay in seconds),
-- dead_lettered (payload: the entry; score: dead_at), skipped (already
-- delivered: nothing stored) or released.
local t = now()
local policy = {consecutive, min_requests, ratio, window, cooldown_min, cooldown_max}
local stats = stats_prefix .. math.floor(t / 60)
local changes = {}
local counted = false
for i = 1, #outcomes, 8 do
  local field, id, outcome, payload, score, dlq_reason, signal, breaker_reason =
    unpack(outcomes, i, i + 7)
  local claim = inflight_prefix .. id
  if token ~= '' and redis.call('GET', claim) == token then redis.call('DEL', claim) end
  if outcome == 'released' then
    if token ~= '' and redis.call('GET', probe) == token then redis.call('DEL', probe) end
  else
    local stored = redis.call('HDEL', held, field) == 1
    if outcome == 'delivered' then
      remember_delivered(delivered_prefix, payload, t, tonumber(dedupe_ttl))
      stored = true
    elseif stored and outcome == 'dead_lettered' then
      dlq_add(dlq, dlq_index, dlq_reason_prefix, id, payload, score, dlq_reason)
    elseif stored and outcome ~= 'skipped' then
      redis.call('ZADD', retry, t + tonumber(score), payload)
    end
    if stored then
      redis.call('HINCRBY', stats, outcome, 1)
      counted = true
    end
  end
  if signal ~= '' then
    local change = breaker_record(breaker, probe, window_prefix, t, signal, token, policy,
                                  breaker_reason)
    if change ~= '' then changes[#changes + 1] = change end
  end
end
if counted then redis.call('EXPIRE', stats, 7200) end
return changes
