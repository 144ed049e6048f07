-- The shared circuit breaker's updates from Distinct's answers, run inside
-- finish.lua so outcomes and their effect on the breaker are one atomic step.
--   breaker        hash: state, reason, opened_at, open_until, cooldown, consecutive...
--   probe          string: the token of the one request allowed while half-open
--   window_prefix  hashes of ok/fail counts, one per tenth of the window
--   policy         {consecutive, min_requests, ratio, window, cooldown_min, cooldown_max}
-- Both return 'opened', 'reopened', 'closed' or ''.

-- breaker_ok(breaker, probe, window_prefix, t, n, window): n answers from Distinct
-- (delivered or rejected events): counted, the run of failures ended, and an
-- open breaker closed (its probe, or a request sent before it opened, got through).
local function breaker_ok(breaker, probe, window_prefix, t, n, window)
  local counts = window_prefix .. decimal(math.floor(t / (window / 10)))
  if redis.call('HINCRBY', counts, 'ok', decimal(n)) == n then  -- the bucket may be new
    redis.call('EXPIRE', counts, decimal(math.ceil(window * 2)))
  end
  local state = redis.call('HMGET', breaker, 'state', 'consecutive')
  if state[2] and state[2] ~= '0' then redis.call('HSET', breaker, 'consecutive', '0') end
  if state[1] == 'open' then
    redis.call('HSET', breaker, 'state', 'closed', 'closed_at', tostring(t), 'cooldown', 0,
               'reason', '')
    redis.call('DEL', probe)
    return 'closed'
  end
  return ''
end

-- breaker_failure(breaker, probe, window_prefix, t, signal, token, policy, reason):
-- one failure ('fail': transient; 'auth': the deployment's, e.g. 401/403).
local function breaker_failure(breaker, probe, window_prefix, t, signal, token, policy, reason)
  local consecutive_limit, min_requests = tonumber(policy[1]), tonumber(policy[2])
  local ratio, window = tonumber(policy[3]), tonumber(policy[4])
  local cooldown_min, cooldown_max = tonumber(policy[5]), tonumber(policy[6])
  local bucket = math.floor(t / (window / 10))
  local counts = window_prefix .. decimal(bucket)
  local state = redis.call('HGET', breaker, 'state') or 'closed'
  local is_probe = token ~= '' and redis.call('GET', probe) == token
  redis.call('HINCRBY', counts, 'fail', 1)
  redis.call('EXPIRE', counts, math.ceil(window * 2))
  local consecutive = redis.call('HINCRBY', breaker, 'consecutive', 1)
  if state == 'open' then
    if not is_probe then return '' end  -- a request sent before the breaker opened
    local cooldown = tonumber(redis.call('HGET', breaker, 'cooldown') or '0') * 2
    if cooldown < cooldown_min then cooldown = cooldown_min end
    if cooldown > cooldown_max then cooldown = cooldown_max end
    redis.call('HSET', breaker, 'cooldown', tostring(cooldown),
               'open_until', tostring(t + cooldown), 'reason', reason)
    redis.call('DEL', probe)
    return 'reopened'
  end
  local trip = signal == 'auth' or consecutive >= consecutive_limit
  if not trip then
    local ok, fail = 0, 0
    for b = bucket - 9, bucket do
      local pair = redis.call('HMGET', window_prefix .. decimal(b), 'ok', 'fail')
      ok = ok + tonumber(pair[1] or '0')
      fail = fail + tonumber(pair[2] or '0')
    end
    trip = ok + fail >= min_requests and fail / (ok + fail) >= ratio
  end
  if trip then
    redis.call('HSET', breaker, 'state', 'open', 'reason', reason, 'opened_at', tostring(t),
               'cooldown', tostring(cooldown_min), 'open_until', tostring(t + cooldown_min))
    redis.call('HINCRBY', breaker, 'opened_count', 1)
    return 'opened'
  end
  return ''
end
