-- is_delivered: 1 if Distinct accepted this id within the dedupe window, else 0.
--! KEYS delivered_prefix
--! ARGV member dedupe_ttl
--! include lib/now.lua
--! include lib/dedupe.lua
if was_delivered(delivered_prefix, member, now(), tonumber(dedupe_ttl)) then return 1 end
return 0
