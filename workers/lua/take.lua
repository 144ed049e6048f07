-- take: events from the queue into worker W's held batch, in one atomic step.
-- First whatever BLMOVE landed for W while it waited on an empty queue, then
-- from the queue's consuming end: at most `limit`, and no more than this
-- worker's share of the queue (its depth over the `free` delivery slots), so
-- a short backlog spreads over every idle thread, though never in batches
-- smaller than `least` while the queue has that many. Each event is held as the
-- field "<batch>:<n>" until its outcome is stored (finish.lua) or it is
-- requeued (requeue_held.lua, requeue_worker.lua). Returns the events.
--! KEYS queue landing held
--! ARGV batch limit free least
--! include lib/decimal.lua
local items = {}
for _, item in ipairs(redis.call('LRANGE', landing, 0, -1)) do items[#items + 1] = item end
if #items > 0 then redis.call('DEL', landing) end
local depth = redis.call('LLEN', queue)
local want = math.max(math.ceil(depth / math.max(1, tonumber(free))),
                      math.min(depth, tonumber(least)))
want = math.min(want, tonumber(limit) - #items)
if want > 0 then
  local more = redis.call('RPOP', queue, decimal(want))
  if more then
    for _, item in ipairs(more) do items[#items + 1] = item end
  end
end
if #items == 0 then return items end
local fields = {}
for n, item in ipairs(items) do
  fields[#fields + 1] = batch .. ':' .. decimal(n)
  fields[#fields + 1] = item
end
redis.call('HSET', held, unpack(fields))
return items
