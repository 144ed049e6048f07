-- now(): seconds on Redis's own clock, so workers on hosts with skewed clocks
-- agree on due times, the breaker, the rate limit and heartbeats.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
