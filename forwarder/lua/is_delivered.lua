-- is_delivered: 1 if Distinct accepted this id within the dedupe window, else 0.
--! KEYS dedupe_prefix legacy_dedupe_prefix
--! ARGV member dedupe_ttl
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/dedupe.lua
if delivered_among(dedupe_prefix, legacy_dedupe_prefix, {member}, now(),
                   tonumber(dedupe_ttl), 'auto')[1] then
  return 1
end
return 0
