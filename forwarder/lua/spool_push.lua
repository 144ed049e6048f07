-- spool_push: a batch of events from a producer's spool onto the queue, once.
-- The marker records that this batch (its claim token) was pushed, so a batch
-- retaken after its producer died between this push and deleting its rows is
-- not queued a second time (forwarder/spool.py).
--! KEYS queue marker
--! ARGV marker_ttl
--! ARGV* items
--! include lib/requeue.lua
if redis.call('SET', marker, '1', 'NX', 'EX', tonumber(marker_ttl)) then
  for _, item in ipairs(items) do requeue(queue, item) end
  return #items
end
return -1
