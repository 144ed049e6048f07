-- replay: dead letters back onto the queue. For each (id, dedupe member, event):
-- 'missing' if no entry has that id; 'skipped' (entry removed) if Distinct took
-- the id meanwhile; else the event is requeued and only then its entry removed,
-- in this one atomic step. Returns one state per triple.
--! KEYS dlq dlq_index dlq_reason_prefix queue delivered_prefix
--! ARGV dedupe_ttl
--! ARGV* triples
--! include lib/now.lua
--! include lib/requeue.lua
--! include lib/dedupe.lua
--! include lib/dlq.lua
local t, ttl = now(), tonumber(dedupe_ttl)
local out = {}
for i = 1, #triples, 3 do
  local id, member, item = triples[i], triples[i + 1], triples[i + 2]
  if redis.call('HEXISTS', dlq, id) == 0 then
    out[#out + 1] = 'missing'
  elseif was_delivered(delivered_prefix, member, t, ttl) then
    dlq_remove(dlq, dlq_index, dlq_reason_prefix, id)
    out[#out + 1] = 'skipped'
  else
    requeue(queue, item)
    dlq_remove(dlq, dlq_index, dlq_reason_prefix, id)
    out[#out + 1] = 'replayed'
  end
end
return out
