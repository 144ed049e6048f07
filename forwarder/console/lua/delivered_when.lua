-- delivered_when: when Distinct accepted an id, as far as the dedupe window
-- tells: {start, length} of the span (epoch seconds) whose set holds it, or
-- false. Reads only; the console's "find an event" shows it beside
-- Store.is_delivered's answer. The spans are lib/dedupe.lua's, newest first,
-- 0.1's hourly sets after them.
--! KEYS dedupe_prefix legacy_dedupe_prefix
--! ARGV member dedupe_ttl
--! include lib/now.lua
--! include lib/dedupe.lua
local t, ttl = now(), tonumber(dedupe_ttl)
local span = math.floor(t / DEDUPE_SPAN_SECONDS)
for n = span, span - math.ceil(ttl / DEDUPE_SPAN_SECONDS), -1 do
  if redis.call('SISMEMBER', dedupe_prefix .. n, member) == 1 then
    return {tostring(n * DEDUPE_SPAN_SECONDS), tostring(DEDUPE_SPAN_SECONDS)}
  end
end
local hour = math.floor(t / 3600)
for h = hour, hour - math.ceil(ttl / 3600), -1 do
  if redis.call('SISMEMBER', legacy_dedupe_prefix .. h, member) == 1 then
    return {tostring(h * 3600), '3600'}
  end
end
return false
