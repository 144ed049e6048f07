-- requeue(queue, item): put an event back on the queue, behind what waits there.
-- The one way anything returns to the queue: due retries (promote), replayed
-- dead letters (replay), events a worker hands back (requeue_held), everything
-- a dead or stopping worker held (requeue_worker), and the producer's spool.
local function requeue(queue, item)
  redis.call('LPUSH', queue, item)
end
