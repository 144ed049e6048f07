"""The ledger of queued messages: what closes kombu's kill -9 window.

kombu's Redis transport takes a message with BRPOP and only afterwards records
it in its ``unacked`` hash; a worker killed in between loses that message, and
the visibility timeout cannot bring it back. So every message the forwarder
puts in the queue is also written, in the same atomic step, to a ledger: a
sorted set of task ids scored by a queue sequence number, plus the message.

- A task that starts removes its message from the ledger (from then on kombu's
  unacknowledged-message restore covers it) and raises the *front*: the
  highest sequence number any task has started.
- The queue is strictly FIFO (everything is LPUSHed, consumed by BRPOP), so a
  ledger entry with a sequence number below the front was taken off the queue.
  If it is still in the ledger ``LEDGER_GRACE_SECONDS`` after the front passed
  it, no task ever started it: it was lost in that window, and the sweeper
  (each worker's promoter thread) queues it again. Dedupe makes a rare second
  copy harmless.

Cost: each queued message is held twice in Redis until a task starts it.
"""

from __future__ import annotations

from forwarder.constants import TASK_NAME

#: In every message build_message() writes, the task id follows this text.
_TASK_ID_MARK = f'"task":"{TASK_NAME}","id":"'
#: The same, as a Lua pattern for scripts that push messages.
TASK_ID_PATTERN = '"task":"' + TASK_NAME.replace(".", "%.") + '","id":"([^"]+)"'

# Push one message to the back of the queue and into the ledger.
# Needs locals K_QUEUE, K_LEDGER, K_LEDGER_MSG, K_SEQ set by the caller.
PUSH_FN = """
local function push_message(msg)
  redis.call('LPUSH', K_QUEUE, msg)
  local tid = string.match(msg, '""" + TASK_ID_PATTERN + """')
  if tid then
    local seq = redis.call('INCR', K_SEQ)
    redis.call('ZADD', K_LEDGER, seq, tid)
    redis.call('HSET', K_LEDGER_MSG, tid, msg)
  end
end
"""

# KEYS: queue, ledger, ledger messages, seq; ARGV: messages
ENQUEUE_LUA = """
local K_QUEUE, K_LEDGER, K_LEDGER_MSG, K_SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
""" + PUSH_FN + """
for i = 1, #ARGV do push_message(ARGV[i]) end
return #ARGV
"""

# A task started: forget its message, raise the front.
# KEYS: ledger, ledger messages, front; ARGV: task id
STARTED_LUA = """
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seq then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if tonumber(seq) > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], seq)
end
return 1
"""

# Queue again up to ARGV[2] ledger entries whose sequence number is below
# ARGV[1] (the front as it stood LEDGER_GRACE_SECONDS ago).
# KEYS: queue, ledger, ledger messages, seq
SWEEP_LUA = """
local K_QUEUE, K_LEDGER, K_LEDGER_MSG, K_SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
""" + PUSH_FN + """
local lost = redis.call('ZRANGEBYSCORE', K_LEDGER, '-inf', '(' .. ARGV[1], 'LIMIT', 0,
                        tonumber(ARGV[2]))
local n = 0
for _, tid in ipairs(lost) do
  local msg = redis.call('HGET', K_LEDGER_MSG, tid)
  redis.call('ZREM', K_LEDGER, tid)
  if msg then
    push_message(msg)
    n = n + 1
  end
end
return n
"""


def task_id_of(message: str) -> str | None:
    """The Celery task id inside a message written by build_message()."""
    start = message.find(_TASK_ID_MARK)
    if start < 0:
        return None
    start += len(_TASK_ID_MARK)
    end = message.find('"', start)
    return message[start:end] if end > start else None
