-- finish: the outcomes of events worker W holds, in order, in one atomic step.
-- One call carries the outcomes of several delivery threads at once (the
-- worker's group commit, workers/outcomes.py), each thread waiting for it
-- before its next POST. For each event: unless it is only 'released' (unsent,
-- still held), take it out of W's held batch and store the outcome (dedupe
-- entry, retry set with a delay on Redis's clock, or DLQ entry), count it per
-- minute, and feed the breaker. An event no longer held (a sweeper requeued it
-- after W's heartbeat stopped) keeps only a 'delivered' outcome, a fact about
-- Distinct; the copy back in the queue carries everything else. A chunk's
-- claims are released with its last outcomes (lib/claims.lua). The group's
-- ids are remembered and its outcomes counted in one command each: what costs
-- Redis is a call and every value crossing into or out of Lua, not an
-- outcome. (Whether an event is still held is HDEL's answer, so its payload
-- never crosses into Lua; deliveries leave it in one HDEL.) Returns the
-- breaker's changes as (position of the outcome that caused it, 'opened',
-- 'reopened' or 'closed') pairs, mostly none.
--! KEYS held claims claim_tokens legacy_claim_prefix stats_prefix dedupe_prefix retry dlq dlq_index dlq_reason_prefix breaker probe window_prefix
--! ARGV dedupe_ttl legacy_claims consecutive min_requests ratio window cooldown_min cooldown_max
--! ARGV* outcomes
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/dlq.lua
--! include lib/claims.lua
--! include lib/dedupe.lua
--! include lib/breaker.lua
-- outcomes: groups, each its chunk's claim token ('' for none), a count,
-- '1' if these are the chunk's last outcomes (its claims are released) else
-- '0', and that many outcomes, each one of
--   'd', field, member: delivered, and Distinct answered (the usual one, in 3
--   values, as each value costs Redis)
--   outcome, field, id, payload, score, dlq_reason, signal, breaker_reason:
--   outcome is delivered (payload: dedupe member), retried or deferred
--   (payload: the event; score: delay in seconds), dead_lettered (payload: the
--   entry; score: dead_at), skipped (already delivered: nothing stored) or
--   released; signal what it tells the breaker ('ok', 'fail', 'auth' or '').
--   While legacy_claims is '1', every outcome comes in this form, and its
--   0.1 claim is released if its chunk has it.
local t = now()
local policy = {consecutive, min_requests, ratio, window, cooldown_min, cooldown_max}
local tokens, fields, ids, kinds, payloads, scores, reasons, signals, causes =
  {}, {}, {}, {}, {}, {}, {}, {}, {}
local ending = {}  -- tokens of the chunks whose last outcomes these are
local i, n = 1, 0
while i <= #outcomes do
  local token, count = outcomes[i], tonumber(outcomes[i + 1])
  if outcomes[i + 2] == '1' and token ~= '' then ending[#ending + 1] = token end
  i = i + 3
  for _ = 1, count do
    n = n + 1
    tokens[n], fields[n] = token, outcomes[i + 1]
    if outcomes[i] == 'd' then
      kinds[n], payloads[n], signals[n], causes[n] = 'delivered', outcomes[i + 2], 'ok', ''
      i = i + 3
    else
      kinds[n], ids[n], payloads[n], scores[n], reasons[n], signals[n], causes[n] =
        outcomes[i], outcomes[i + 2], outcomes[i + 3], outcomes[i + 4], outcomes[i + 5],
        outcomes[i + 6], outcomes[i + 7]
      i = i + 8
    end
  end
end
if legacy_claims == '1' then
  local keys, owners = {}, {}
  for k = 1, n do
    if tokens[k] ~= '' and ids[k] then
      keys[#keys + 1] = legacy_claim_prefix .. ids[k]
      owners[#owners + 1] = tokens[k]
    end
  end
  if #keys > 0 then
    local values = redis.call('MGET', unpack(keys))
    local drop = {}
    for j = 1, #keys do
      if claim_owned(values[j], owners[j]) then drop[#drop + 1] = keys[j] end
    end
    if #drop > 0 then redis.call('DEL', unpack(drop)) end
  end
end
local drop_held, members, counts = {}, {}, {}
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
  local outcome, signal = kinds[k], signals[k]
  if outcome == 'released' then
    if tokens[k] ~= '' and redis.call('GET', probe) == tokens[k] then redis.call('DEL', probe) end
  elseif outcome == 'delivered' then
    -- A delivery is stored whether or not the event is still held (its
    -- fields leave in one HDEL below); the other outcomes only if it is.
    drop_held[#drop_held + 1] = fields[k]
    members[#members + 1] = payloads[k]
    counts.delivered = (counts.delivered or 0) + 1
  elseif redis.call('HDEL', held, fields[k]) == 1 then
    if outcome == 'dead_lettered' then
      dlq_add(dlq, dlq_index, dlq_reason_prefix, ids[k], payloads[k], scores[k], reasons[k])
    elseif outcome ~= 'skipped' then
      redis.call('ZADD', retry, t + tonumber(scores[k]), payloads[k])
    end
    counts[outcome] = (counts[outcome] or 0) + 1
  end
  if signal == 'ok' then
    oks, last_ok = oks + 1, k
  elseif signal ~= '' then
    flush_oks()  -- the answers before this failure count first, as they came
    local change = breaker_failure(breaker, probe, window_prefix, t, signal, tokens[k], policy,
                                   causes[k])
    if change ~= '' then changes[#changes + 1] = k; changes[#changes + 1] = change end
  end
end
flush_oks()
if #drop_held > 0 then redis.call('HDEL', held, unpack(drop_held)) end
for _, token in ipairs(ending) do release_claims(claims, claim_tokens, token) end
-- Counted per minute; a field new this minute may be a new hash, given its
-- time to live then. The first delivery of a minute also (re)sets the time to
-- live of the dedupe set it goes to: a set is new only in a minute with no
-- delivery before (its 6 hours begin on a minute), so none is left without.
local stats = stats_prefix .. decimal(math.floor(t / 60))
local fresh, first_delivery = false, false
for outcome, count in pairs(counts) do
  if redis.call('HINCRBY', stats, outcome, decimal(count)) == count then
    fresh = true
    first_delivery = first_delivery or outcome == 'delivered'
  end
end
if fresh then redis.call('EXPIRE', stats, '7200') end
remember_delivered(dedupe_prefix, members, t, tonumber(dedupe_ttl), first_delivery)
return changes
