-- requeue_held: worker W hands events back (a task out of time, or stopping):
-- each field still held goes back onto the queue. Returns how many.
--! KEYS held queue
--! ARGV* fields
--! include lib/requeue.lua
local n = 0
for _, field in ipairs(fields) do
  local item = redis.call('HGET', held, field)
  if item then
    requeue(queue, item)
    redis.call('HDEL', held, field)
    n = n + 1
  end
end
return n
