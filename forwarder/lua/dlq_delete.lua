-- dlq_delete: remove dead letters by id; returns how many existed.
--! KEYS dlq dlq_index dlq_reason_prefix
--! ARGV* ids
--! include lib/dlq.lua
local n = 0
for _, id in ipairs(ids) do n = n + dlq_remove(dlq, dlq_index, dlq_reason_prefix, id) end
return n
