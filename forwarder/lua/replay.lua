-- replay: dead letters back onto the queue. For each (id, dedupe member, event):
-- 'missing' if no entry has that id; 'skipped' (entry removed) if Distinct took
-- the id meanwhile; else the event is requeued and only then its entry removed,
-- in this one atomic step. Returns one state per triple.
--! KEYS dlq dlq_index dlq_reason_prefix queue dedupe_prefix legacy_dedupe_prefix
--! ARGV dedupe_ttl
--! ARGV* triples
--! include lib/decimal.lua
--! include lib/now.lua
--! include lib/requeue.lua
--! include lib/dedupe.lua
--! include lib/dlq.lua
local members = {}
for i = 1, #triples, 3 do members[#members + 1] = triples[i + 1] end
local delivered = delivered_among(dedupe_prefix, legacy_dedupe_prefix, members, now(),
                                  tonumber(dedupe_ttl), 'auto')
local out = {}
for i = 1, #triples, 3 do
  local id, item = triples[i], triples[i + 2]
  if redis.call('HEXISTS', dlq, id) == 0 then
    out[#out + 1] = 'missing'
  elseif delivered[(i + 2) / 3] then
    dlq_remove(dlq, dlq_index, dlq_reason_prefix, id)
    out[#out + 1] = 'skipped'
  else
    requeue(queue, item)
    dlq_remove(dlq, dlq_index, dlq_reason_prefix, id)
    out[#out + 1] = 'replayed'
  end
end
return out
