-- upgrade: events that 0.1 workers held or queued, back onto the queue as they
-- were (0.1 Celery messages; the dispatcher turns each into its events). Each
-- call moves at most `limit` of each kind, and only what no live 0.1 worker
-- can still be working on:
--   0.1's queue list (fed by 0.1 producers and kombu's restores);
--   kombu's unacked entries older than 0.1's visibility timeout (`unacked_after`);
--   fetch lists whose 0.1 worker stopped refreshing them (`fetch_after`);
--   taken batches past their deadline.
-- Returns how many messages moved.
--! KEYS legacy_queue unacked unacked_index fetchers taken queue
--! ARGV taken_prefix unacked_after fetch_after limit
--! include lib/now.lua
--! include lib/requeue.lua
local t, most = now(), tonumber(limit)
local n = 0
local waiting = redis.call('RPOP', legacy_queue, most)
if waiting then
  for _, message in ipairs(waiting) do requeue(queue, message); n = n + 1 end
end
local late = redis.call('ZRANGEBYSCORE', unacked_index, '-inf', t - tonumber(unacked_after),
                        'LIMIT', 0, most)
for _, tag in ipairs(late) do
  local raw = redis.call('HGET', unacked, tag)
  if raw then
    local ok, record = pcall(cjson.decode, raw)
    if ok and type(record) == 'table' and type(record[1]) == 'table' then
      requeue(queue, cjson.encode(record[1]))
      n = n + 1
    end
    redis.call('HDEL', unacked, tag)
  end
  redis.call('ZREM', unacked_index, tag)
end
local silent = redis.call('ZRANGEBYSCORE', fetchers, '-inf', t - tonumber(fetch_after),
                          'LIMIT', 0, most)
for _, list in ipairs(silent) do
  local message = redis.call('RPOP', list)
  while message do
    requeue(queue, message)
    n = n + 1
    message = redis.call('RPOP', list)
  end
  redis.call('ZREM', fetchers, list)
end
local overdue = redis.call('ZRANGEBYSCORE', taken, '-inf', t, 'LIMIT', 0, most)
for _, batch in ipairs(overdue) do
  for _, message in ipairs(redis.call('HVALS', taken_prefix .. batch)) do
    requeue(queue, message)
    n = n + 1
  end
  redis.call('DEL', taken_prefix .. batch)
  redis.call('ZREM', taken, batch)
end
return n
