-- legacy_left: what 0.1 left that a 0.2 worker must still respect, as two
-- flags: {any of 0.1's hourly dedupe sets that may hold ids of the window is
-- left, a 0.1 worker is registered (its fetch list in `fetchers`)}. A worker
-- asks once a minute and tells admit.lua and finish.lua (workers/gate.py:
-- Legacy). Remove in 0.3.
--! KEYS legacy_dedupe_prefix fetchers
--! ARGV dedupe_ttl
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/dedupe.lua
local dedupe = legacy_dedupe_left(legacy_dedupe_prefix, now(), tonumber(dedupe_ttl)) and 1 or 0
return {dedupe, redis.call('EXISTS', fetchers)}
