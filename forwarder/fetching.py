"""How a worker takes messages off the queue without a kill -9 losing one.

kombu's Redis transport takes a message with BRPOP and only afterwards records
it in its ``unacked`` hash; a worker killed in between would lose it, and the
visibility timeout could not bring it back. The forwarder's kombu channel
(workers/transport.py) fetches with ``BLMOVE`` instead: the message moves
atomically from the queue to the worker's own *fetch list*
(``fetching:{id}``), and leaves it only once kombu's unacked record exists. A
message that stays in a fetch list for ``FETCH_GRACE_SECONDS`` belonged to a
worker that died in that window: the sweeper (each worker's promoter thread)
queues it again. Producers therefore write one plain LPUSH per message.

A running task may also *take* more messages straight off the queue
(``TAKE_LUA``) and deliver their events with its own, so that a backlog of
single-event messages costs one Celery task per batch rather than per event.
Taking is one atomic step: the messages leave the queue and land in a *taken*
batch with a deadline. The task deletes the batch once every event has an
outcome; a batch still there at its deadline belonged to a worker that died,
and the sweeper queues its messages again (dedupe skips any event already
delivered).
"""

from __future__ import annotations

# Push one message to the back of the queue. Needs a local K_QUEUE.
PUSH_FN = """
local function push_message(msg)
  redis.call('LPUSH', K_QUEUE, msg)
end
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# Take messages from the consuming end of the queue into the taken batch
# ARGV[1], due back at Redis time + ARGV[3] seconds: at most ARGV[2] messages,
# stopping once they carry ARGV[4] events (build_message's header says how
# many; a message without it counts as one).
# KEYS: queue, taken index, taken prefix
TAKE_LUA = _NOW + """
local msgs, events = {}, 0
local batch = KEYS[3] .. ARGV[1]
while #msgs < tonumber(ARGV[2]) and events < tonumber(ARGV[4]) do
  local msg = redis.call('RPOP', KEYS[1])
  if not msg then break end
  msgs[#msgs + 1] = msg
  redis.call('HSET', batch, #msgs, msg)
  events = events + (tonumber(string.match(msg, '"x_forwarder_events":(%d+)')) or 1)
end
if #msgs > 0 then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1]) end
return msgs
"""

# A taken batch is done: queue ARGV[2..] (events handed back, if any) and drop
# the batch ARGV[1], in one step.
# KEYS: queue, taken index, taken prefix
RELEASE_LUA = """
for i = 2, #ARGV do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('DEL', KEYS[3] .. ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# Queue again the messages of up to ARGV[1] taken batches past their deadline.
# KEYS: queue, taken index, taken prefix
RESTORE_TAKEN_LUA = _NOW + """
local late = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local n = 0
for _, batch in ipairs(late) do
  for _, msg in ipairs(redis.call('HVALS', KEYS[3] .. batch)) do
    redis.call('LPUSH', KEYS[1], msg)
    n = n + 1
  end
  redis.call('DEL', KEYS[3] .. batch)
  redis.call('ZREM', KEYS[2], batch)
end
return n
"""

# Queue again messages stranded in a fetch list. Each moves only if it is
# still there, so two sweepers (or the owner finishing late) never double it.
# KEYS: queue, fetch list; ARGV: messages
RESCUE_LUA = """
local n = 0
for _, msg in ipairs(ARGV) do
  if redis.call('LREM', KEYS[2], 1, msg) == 1 then
    redis.call('LPUSH', KEYS[1], msg)
    n = n + 1
  end
end
return n
"""
