-- dlq_import: store checked entries (`dlq import`), each replacing any entry
-- with the same id, all in one atomic step. Quads: id, entry JSON, dead_at, reason.
--! KEYS dlq dlq_index dlq_reason_prefix
--! ARGV* quads
--! include lib/dlq.lua
for i = 1, #quads, 4 do
  dlq_add(dlq, dlq_index, dlq_reason_prefix, quads[i], quads[i + 1], quads[i + 2], quads[i + 3])
end
return #quads / 4
