-- legacy_dedupe_left: 1 while any of 0.1's hourly dedupe sets that may hold
-- ids of the window is left, else 0. A worker asks once a minute and tells
-- admit.lua (workers/gate.py). Remove in 0.3.
--! KEYS legacy_dedupe_prefix
--! ARGV dedupe_ttl
--! include lib/now.lua
--! include lib/dedupe.lua
if legacy_dedupe_left(legacy_dedupe_prefix, now(), tonumber(dedupe_ttl)) then return 1 end
return 0
